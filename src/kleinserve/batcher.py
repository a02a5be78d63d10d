"""The batcher: the single loop that feeds one model's engine.

Jobs wait in a queue. The loop takes the oldest, gathers queued jobs with the same batch key (size,
steps, guidance, reference layout) up to `max_batch_images`, waits up to `max_wait_s` for more
company when the batch is not full, and runs it on the GPU thread, so the event loop never blocks
on the engine. Past `max_queue_depth` queued jobs, `submit` refuses new work with `QueueFull`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from kleinserve.errors import JobCancelled, QueueFull
from kleinserve.request import GenerationRequest, GenerationResult

if TYPE_CHECKING:  # the engine (and torch) load only when a model does, not when the API is imported
    from kleinserve.engine import Engine
    from kleinserve.engine.engine import StepProgress


class _BatchCancelled(Exception):
    """Raised on the engine thread at a step boundary when every job in the batch was cancelled."""


@dataclass(eq=False)
class Work:
    job_id: str
    request: GenerationRequest
    key: tuple
    future: asyncio.Future[GenerationResult]
    enqueued_at: float = field(default_factory=time.monotonic)
    cancelled: bool = False  # read by the engine thread at each step boundary
    wants_previews: bool = False  # step previews of its images are computed for it (a progress stream)


class BatchListener(Protocol):
    """Told what happens to queued work; every call arrives on the event loop."""

    def batch_started(self, works: list[Work]) -> None: ...
    def batch_step(self, works: list[Work], step: int, total: int, previews: dict[str, list]) -> None:
        """`previews`: job id -> its images' step previews (HxWx3 uint8), for the works that want them."""

    def batch_finished(self, works: list[Work], timings: dict[str, float]) -> None: ...


class Batcher:
    def __init__(
        self,
        engine: Engine,
        gpu_thread: Executor,
        listener: BatchListener,
        *,
        max_batch_images: int,
        max_wait_s: float,
        max_queue_depth: int,
    ):
        self.engine = engine
        self.model = engine.spec.id
        self._gpu_thread = gpu_thread
        self._listener = listener
        self.max_batch_images = max_batch_images
        self.max_wait_s = max_wait_s
        self.max_queue_depth = max_queue_depth
        self._queue: list[Work] = []
        self._arrived = asyncio.Event()
        self._running: list[Work] = []
        self._seconds_per_batch = 1.0  # running estimate, for Retry-After

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(
        self, job_id: str, request: GenerationRequest, *, previews: bool = False
    ) -> asyncio.Future[GenerationResult]:
        self.check_room()
        future = asyncio.get_running_loop().create_future()
        work = Work(job_id, request, self.engine.batch_key(request), future, wants_previews=previews)
        self._queue.append(work)
        self._arrived.set()
        return work.future

    def check_room(self) -> None:
        if len(self._queue) >= self.max_queue_depth:
            raise QueueFull(self.model, len(self._queue), self.retry_after())

    def position(self, job_id: str) -> int | None:
        """0-based place in the queue, None once the job has left it."""
        return next((i for i, work in enumerate(self._queue) if work.job_id == job_id), None)

    def cancel(self, job_id: str, reason: str = "cancelled") -> bool:
        """Cancel a queued or running job: its future fails with JobCancelled at once. A queued job never
        runs; a running batch stops at the next step boundary once all its jobs are cancelled (until
        then the others in it go on). False if the job is neither queued nor running."""
        for work in (*self._queue, *self._running):
            if work.job_id == job_id and not work.future.done():
                if work in self._queue:
                    self._queue.remove(work)
                work.cancelled = True
                work.future.set_exception(JobCancelled(reason))
                return True
        return False

    def fail_queued(self, error: Exception) -> None:
        """Every queued job fails with `error`; running ones go on."""
        for work in self._queue:
            if not work.future.done():
                work.future.set_exception(error)
        self._queue = []

    def fail_all(self, error: Exception) -> None:
        """Every queued and running job fails with `error`; a running batch stops at its next step."""
        self.fail_queued(error)
        for work in self._running:
            if not work.future.done():
                work.future.set_exception(error)
            work.cancelled = True

    def retry_after(self) -> int:
        batches_ahead = math.ceil((len(self._queue) + 1) / self.max_batch_images)
        return max(1, math.ceil(batches_ahead * self._seconds_per_batch))

    async def run(self) -> None:
        while True:
            batch = await self._next_batch()
            self._running = batch  # from here on fail_all() reaches it, even if running it breaks
            await self._run_batch(batch)

    async def _next_batch(self) -> list[Work]:
        while True:
            self._queue = [work for work in self._queue if not work.future.done()]  # e.g. client gone
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            batch, images = self._compatible_with(self._queue[0])
            wait = self._queue[0].enqueued_at + self.max_wait_s - time.monotonic()
            if images >= self.max_batch_images or wait <= 0:
                for work in batch:
                    self._queue.remove(work)
                return batch
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=wait)

    def _compatible_with(self, first: Work) -> tuple[list[Work], int]:
        batch, images = [], 0
        for work in self._queue:
            if work.key != first.key:
                continue
            if batch and images + work.request.num_images > self.max_batch_images:
                break
            batch.append(work)
            images += work.request.num_images
        return batch, images

    async def _run_batch(self, batch: list[Work]) -> None:
        loop = asyncio.get_running_loop()
        self._listener.batch_started(batch)

        def on_step(progress: StepProgress) -> None:  # on the engine thread
            if all(work.cancelled for work in batch):
                raise _BatchCancelled
            previews = _previews_by_job(batch, progress) if any(w.wants_previews for w in batch) else {}
            loop.call_soon_threadsafe(
                self._listener.batch_step, batch, progress.step, progress.total_steps, previews
            )

        requests = [work.request for work in batch]
        start = time.monotonic()
        self._running = batch
        try:
            results = await loop.run_in_executor(
                self._gpu_thread, lambda: self.engine.generate(requests, on_step=on_step)
            )
        except _BatchCancelled:  # every future already holds JobCancelled
            return
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            # One request can fail a whole batch: run each alone, so only the culprit fails.
            for work in batch:
                if not work.future.done():
                    await self._run_batch([work])
            return
        finally:
            self._running = []
        self._seconds_per_batch = 0.8 * self._seconds_per_batch + 0.2 * (time.monotonic() - start)
        self._listener.batch_finished(batch, results[0].timings)
        for work, result in zip(batch, results, strict=True):
            if not work.future.done():
                work.future.set_result(result)


def _previews_by_job(batch: list[Work], progress: StepProgress) -> dict[str, list]:
    """The batch's previews (one per image, in request order) split among the works that want them."""
    pictures, offset, by_job = progress.previews(), 0, {}
    for index in progress.request_indices:
        work = batch[index]
        if work.wants_previews:
            by_job[work.job_id] = pictures[offset : offset + work.request.num_images]
        offset += work.request.num_images
    return by_job
