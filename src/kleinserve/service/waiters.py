"""Who in this process waits for a job's end: one `Waiter` per job, kept by `Waiters`, the only owner of the
job id -> waiter map. The service registers a waiter when it submits a job; whatever learns of the job's end
here (its completion, a cancel, the shutdown, a job followed in the store) settles it with the job's
`Outcome`. A detached job's waiter has no caller: its end is only measured for /v1/stats.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kleinserve.job import Job
from kleinserve.service.outcome import CANCELLED, Outcome
from kleinserve.service.stats import RequestStats

# (step, total steps, previews): called on the event loop after each denoising step of a watched job, with
# small HxWx3 uint8 pictures of the current estimate, one per image of the job.
StepListener = Callable[[int, int, list[np.ndarray]], None]


@dataclass
class Waiter:
    model: str
    detached: bool
    on_step: StepListener | None
    created_at: float
    ended: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Waiters:
    def __init__(self, stats: RequestStats):
        self.stats = stats
        self._waiting: dict[str, Waiter] = {}

    def add(self, job: Job, on_step: StepListener | None = None) -> Waiter:
        waiter = Waiter(job.model, job.detached, on_step, job.created_at)
        self._waiting[job.id] = waiter
        return waiter

    def measure(self, job: Job) -> None:
        """A detached job that ends here though nobody here submitted it (a worker's): its end is measured
        as if it had been."""
        if job.detached and job.id not in self._waiting:
            self.add(job)

    def drop(self, job_id: str) -> None:
        """Nobody here waits for the job any more, and it has not ended (e.g. it runs again elsewhere)."""
        self._waiting.pop(job_id, None)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._waiting

    def get(self, job_id: str) -> Waiter | None:
        return self._waiting.get(job_id)

    def callers(self) -> list[tuple[str, Waiter]]:
        """(job id, waiter) of the jobs a caller here waits for (not detached)."""
        return [(job_id, waiter) for job_id, waiter in self._waiting.items() if not waiter.detached]

    def step(self, job_id: str, step: int, total: int, previews: list) -> None:
        waiter = self._waiting.get(job_id)
        if waiter is not None and waiter.on_step is not None:
            waiter.on_step(step, total, previews)

    def wants_previews(self, job_id: str) -> bool:
        waiter = self._waiting.get(job_id)
        return waiter is not None and waiter.on_step is not None

    def settle(self, job_id: str, outcome: Outcome) -> None:
        """The job ended: its waiter gets the images or the error, and a detached job's end is measured."""
        waiter = self._waiting.pop(job_id, None)
        if waiter is None:  # a job recovered from a previous run, or one nobody here waits for
            return
        if outcome.error is not None:
            waiter.ended.set_exception(outcome.error.exception())
            waiter.ended.exception()  # retrieved: detached jobs have no caller awaiting them
        else:
            waiter.ended.set_result(outcome.generated)
        if waiter.detached and (outcome.error is None or outcome.error.code != CANCELLED):
            seconds = time.time() - waiter.created_at
            status = 500 if outcome.error is not None else 200
            images = len(outcome.generated.images) if outcome.generated is not None else 0
            self.stats.observe(waiter.model, seconds, seconds, status, images)
