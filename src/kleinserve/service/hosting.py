"""Where the served models run, as the service facade sees it: one small interface, two implementations.

- `LocalModels` (local_models.py): the models run in this process: loaded, warmed up, each fed by a
  batcher under supervision. `serve` (one process) and `kleinserve worker` are built on it.
- `WorkerModels` (worker_models.py): the models run in `kleinserve worker` processes, known from their
  heartbeats; a job submitted here is followed in the job store. `serve --role api` is built on it.

What differs between the process roles is which implementation (and which other parts) roles/assembly.py
puts together; the facade asks this interface and never which kind it has.
"""

from __future__ import annotations

from typing import Protocol

from kleinserve.job import Job
from kleinserve.service.served_models import ServedModel
from kleinserve.service.waiters import StepListener, Waiter


class Hosting(Protocol):
    @property
    def models(self) -> list[ServedModel]: ...

    @property
    def ready(self) -> bool:
        """Whether requests can be served (/ready)."""

    def model(self, name: str | None) -> ServedModel:
        """The served model a request names (id or alias, any case; None: the default); ModelNotServed or
        ModelNotReady when there is none to run it."""

    def waiter(self, job: Job, on_step: StepListener | None) -> Waiter | None:
        """Registers who waits here for a job about to be queued (None: nobody here hears of its end)."""

    def queued(self, job: Job) -> None:
        """The job is in the store's queue: start it on its way (wake its batcher, or follow it)."""

    def retry_after(self, served: ServedModel, depth: int) -> int:
        """Seconds until a queue of `depth` jobs probably has room."""

    def stop_job(self, model: str, job_id: str) -> None:
        """The job was cancelled: a batch running it here stops once none of its jobs is wanted."""

    def wake(self) -> None:
        """Jobs were queued again (expired leases): batchers here look at once."""

    async def start(self) -> None: ...

    def begin_shutdown(self, grace_s: float) -> None:
        """Take no new batch; stop the running ones after `grace_s`."""

    async def stopped(self) -> None:
        """After begin_shutdown: until the batchers stopped."""

    def close(self) -> None:
        """Release threads (after the background work stopped)."""
