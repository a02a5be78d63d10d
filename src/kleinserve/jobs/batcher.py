"""The batcher: the worker loop that feeds one model's engine from the job store's queue.

It claims the oldest queued job of its model with the compatible jobs after it (batch_policy.py) up to
`max_batch_images`, letting a batch that is not full wait up to `max_wait_s` for company, and runs it on
the model's engine thread so the event loop never blocks on the engine. While the batch runs, its lease
in the store is renewed at every denoising step and on a timer; a job cancelled in the store (here or in
another process) is seen there, and the engine's `should_stop` check stops the batch at the next step
boundary once none of its jobs is wanted.

The engine side is a protocol (`BatchEngine`): a batch key and `generate` with a step callback and a
`should_stop` check, nothing that could not cross a process boundary.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from kleinserve.errors import DatabaseUnavailable, GenerationStopped
from kleinserve.job import Job
from kleinserve.jobs.contract import JobStore
from kleinserve.jobs.inputs import unpack_inputs
from kleinserve.models import ModelSpec
from kleinserve.request import GenerationRequest, GenerationResult, OutputOptions

if TYPE_CHECKING:  # the engine (and torch) load only when a model does, not when the API is imported
    from kleinserve.engine.engine import StepProgress

log = logging.getLogger("kleinserve")

POLL_S = 1.0  # a backstop: new work (here, or from another process through the store) wakes the loop
OUTAGE_PAUSE_S = 2.0  # the longest pause between claims while the job database is unreachable


class BatchEngine(Protocol):
    """What the batcher needs of an engine."""

    spec: ModelSpec

    def batch_key(self, request: GenerationRequest) -> str: ...

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_step: Callable[[StepProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[GenerationResult]: ...


@dataclass(eq=False)
class Work:
    """A claimed job, ready to run."""

    job: Job
    request: GenerationRequest
    output: OutputOptions
    lease: str
    stopped: bool = False  # no longer wanted (cancelled, or its lease lost); read on the engine thread

    @property
    def job_id(self) -> str:
        return self.job.id

    def lease_lost(self) -> None:
        """Requeued or cancelled elsewhere (a renewal or a progress write found it no longer held): it stops,
        with one log line whichever of the two saw it first."""
        if not self.stopped:
            log.warning("job %s is no longer leased here (requeued or cancelled): it stops", self.job_id)
            self.stopped = True


class BatchListener(Protocol):
    """Told what happens to claimed work; every call arrives on the event loop."""

    def wants_previews(self, job_id: str) -> bool: ...
    def batch_started(self, works: list[Work]) -> None: ...
    def batch_step(self, works: list[Work], step: int, total: int, previews: dict[str, list]) -> None:
        """`previews`: job id -> its images' step previews (HxWx3 uint8), for the jobs that want them."""

    def batch_finished(self, works: list[Work], timings: dict[str, float]) -> None: ...
    def job_done(self, work: Work, result: GenerationResult) -> None: ...
    def job_failed(self, work: Work, error: Exception) -> None: ...


class Batcher:
    def __init__(
        self,
        engine: BatchEngine,
        engine_thread: Executor,
        jobs: JobStore,
        listener: BatchListener,
        *,
        max_batch_images: int,
        max_wait_s: float,
        lease_s: float,
    ):
        self.engine = engine
        self.model = engine.spec.id
        self._engine_thread = engine_thread
        self._jobs = jobs
        self._listener = listener
        self.max_batch_images = max_batch_images
        self.max_wait_s = max_wait_s
        self.lease_s = lease_s
        self._arrived = asyncio.Event()
        self._running: list[Work] = []
        self._draining = False
        self._renewals: set[asyncio.Future] = set()
        self.seconds_per_batch = 1.0  # running estimate, for Retry-After

    def wake(self) -> None:
        """New work was queued."""
        self._arrived.set()

    def stop_job(self, job_id: str) -> None:
        """The job is no longer wanted: its batch stops at the next step once all its jobs are."""
        for work in self._running:
            if work.job_id == job_id:
                work.stopped = True

    def drain(self) -> None:
        """Claim nothing more (the server is stopping)."""
        self._draining = True

    def running_leases(self) -> set[str]:
        return {work.lease for work in self._running}

    @property
    def running_jobs(self) -> int:
        """Jobs in the batch running now (Ray Serve's engine autoscaling counts them)."""
        return len(self._running)

    def stop_running(self) -> list[Work]:
        """Stop the running batch at its next step; its works."""
        for work in self._running:
            work.stopped = True
        return list(self._running)

    async def run(self) -> None:
        """Claims and runs batches until drained. While the job database is unreachable it claims again
        after a growing pause (up to OUTAGE_PAUSE_S): an outage is not a dead batcher."""
        pause = 0.0
        while not self._draining:
            try:
                batch = await self._next_batch()
            except DatabaseUnavailable as exc:
                pause = min(max(2 * pause, 0.25), OUTAGE_PAUSE_S)
                log.warning("cannot claim work for %s (%s); trying again in %g s", self.model, exc, pause)
                await asyncio.sleep(pause)
                continue
            pause = 0.0
            if batch:
                self._running = batch  # left set if running it breaks: the supervisor fails these
                await self._run_batch(batch)
                self._running = []

    async def _next_batch(self) -> list[Work]:
        self._arrived.clear()
        claim = await self._jobs.claim(
            self.model,
            max_images=self.max_batch_images,
            lease_s=self.lease_s,
            ready_before=time.time() - self.max_wait_s,
        )
        if not claim.jobs:
            wait = POLL_S if claim.ready_at is None else claim.ready_at + self.max_wait_s - time.time()
            await self._wait_for_work(min(POLL_S, max(wait, 0.001)))
            return []
        works = []
        for job in claim.jobs:
            if (work := await self._unpack(job, claim.lease)) is not None:
                works.append(work)
        return works

    async def _wait_for_work(self, timeout: float) -> None:
        """Until work is queued in this process (wake) or by any process sharing the store, or `timeout`."""
        waits = {
            asyncio.ensure_future(self._arrived.wait()),
            asyncio.ensure_future(self._jobs.wait_queued(self.model, timeout)),
        }
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _unpack(self, job: Job, lease: str) -> Work | None:
        data = await self._jobs.inputs(job.id)
        try:
            if data is None:
                raise ValueError("its inputs are missing from the job store")
            request, output = await asyncio.to_thread(unpack_inputs, data)
        except Exception as exc:  # a corrupt record: that job fails, the others run
            log.exception("cannot read the inputs of job %s", job.id)
            self._listener.job_failed(Work(job, None, OutputOptions(), lease), exc)  # type: ignore[arg-type]
            return None
        return Work(job, request, output, lease)

    async def _run_batch(self, batch: list[Work]) -> None:
        loop = asyncio.get_running_loop()
        self._listener.batch_started(batch)
        previews_wanted = {w.job_id for w in batch if self._listener.wants_previews(w.job_id)}

        def on_step(progress: StepProgress) -> None:  # on the engine thread
            previews = _previews_by_job(batch, progress, previews_wanted) if previews_wanted else {}
            loop.call_soon_threadsafe(self._stepped, batch, progress.step, progress.total_steps, previews)

        requests = [work.request for work in batch]
        start = time.monotonic()
        renewing = asyncio.create_task(self._keep_lease(batch))
        try:
            results = await loop.run_in_executor(
                self._engine_thread,
                lambda: self.engine.generate(
                    requests, on_step=on_step, should_stop=lambda: all(w.stopped for w in batch)
                ),
            )
        except GenerationStopped:  # none of its jobs is wanted any more; each already has its end
            return
        except Exception as exc:
            await self._failed(batch, exc)
            return
        finally:
            renewing.cancel()
        self.seconds_per_batch = 0.8 * self.seconds_per_batch + 0.2 * (time.monotonic() - start)
        self._listener.batch_finished(batch, results[0].timings)
        for work, result in zip(batch, results, strict=True):
            if not work.stopped:
                self._listener.job_done(work, result)

    async def _failed(self, batch: list[Work], error: Exception) -> None:
        if len(batch) == 1:
            if not batch[0].stopped:
                self._listener.job_failed(batch[0], error)
            return
        # One request can fail a whole batch: run each alone, so only the culprit fails.
        for work in batch:
            if not work.stopped:
                await self._run_batch([work])

    def _stepped(self, batch: list[Work], step: int, total: int, previews: dict[str, list]) -> None:
        self._listener.batch_step(batch, step, total, previews)
        renewal = asyncio.ensure_future(self._renew(batch, note=f"step {step}/{total}"))
        self._renewals.add(renewal)  # held until done: the loop keeps only weak references to tasks
        renewal.add_done_callback(self._renewals.discard)

    async def _keep_lease(self, batch: list[Work]) -> None:
        """Renewal between steps too: a long text-encode or decode must not look like a dead worker."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            await self._renew(batch)

    async def _renew(self, batch: list[Work], note: str | None = None) -> None:
        """`note` goes into the log of each job still held, with the renewal."""
        try:
            held = await self._jobs.renew(batch[0].lease, self.lease_s, note)
        except Exception as exc:  # e.g. a full disk: the next renewal may succeed
            log.warning("could not renew the lease of a running batch: %s", exc)
            return
        for work in batch:
            if work.job_id not in held:
                work.lease_lost()


def _previews_by_job(batch: list[Work], progress: StepProgress, wanted: set[str]) -> dict[str, list]:
    """The batch's previews (one per image, in request order) split among the works that want them."""
    pictures, offset, by_job = progress.previews(), 0, {}
    for index in progress.request_indices:
        work = batch[index]
        if work.job_id in wanted:
            by_job[work.job_id] = pictures[offset : offset + work.request.num_images]
        offset += work.request.num_images
    return by_job
