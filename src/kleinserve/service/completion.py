"""A job's end in this process: its images came out of the engine -> screen, encode, store, record, tell
whoever waits.

The batcher tells `BatchEvents` what happens to the work it claimed (started, each step, done, failed);
`JobCompletion` takes a job from the engine's result to its final record, written under the batch's lease,
and then settles it: end listeners hear of it and its waiter here (a `Waiter`, registered by the service at
submit) gets the images or the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from kleinserve.errors import GenerationFailed, JobCancelled, StorageFull, is_disk_full
from kleinserve.job import Job, JobStatus, UsageEntry
from kleinserve.jobs.batcher import Work
from kleinserve.jobs.contract import JobStore
from kleinserve.metrics import Metrics
from kleinserve.pricing import Prices
from kleinserve.request import GenerationRequest, GenerationResult, OutputOptions
from kleinserve.service.outputs import Generated, Outputs, result_record
from kleinserve.service.stats import RequestStats
from kleinserve.service.watch import ProgressRecorder
from kleinserve.service.webhook_queue import WebhookQueue
from kleinserve.settings import Settings
from kleinserve.usage import request_usage

if TYPE_CHECKING:
    from kleinserve.service.safety import SafetyChecker

EndListener = Callable[[str], Awaitable[None]]
# (step, total steps, previews): called on the event loop after each denoising step of a watched job, with
# small HxWx3 uint8 pictures of the current estimate, one per image of the job.
StepListener = Callable[[int, int, list[np.ndarray]], None]

log = logging.getLogger("kleinserve")

DISK_FULL = "the server's disk is full, so nothing more can be recorded or stored; retry once space is freed"
RECORD_RETRY_DELAYS = (0.5, 1, 2, 5, *(10,) * 60)  # about ten minutes of retries


@dataclass
class Waiter:
    """Who in this process waits for a job's end."""

    model: str
    detached: bool
    on_step: StepListener | None
    created_at: float
    ended: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class JobCompletion:
    def __init__(
        self,
        jobs: JobStore,
        outputs: Outputs,
        metrics: Metrics,
        prices: Prices,
        stats: RequestStats,
        webhook_queue: WebhookQueue,
        *,
        waiting: dict[str, Waiter],
        spawn: Callable[[Awaitable], None],
        role: str,
        worker_id: str | None,
    ):
        """`waiting`: job id -> who in this process waits for its end (the service registers them);
        `spawn(coroutine)`: runs fire-and-forget work the service awaits when it stops."""
        self.jobs = jobs
        self.outputs = outputs
        self.metrics = metrics
        self.prices = prices
        self.stats = stats
        self.webhook_queue = webhook_queue
        self.waiting = waiting
        self.spawn = spawn
        self.role = role
        self.worker_id = worker_id
        self.progress = ProgressRecorder(jobs) if role == "worker" else None
        self.end_listeners: list[EndListener] = []  # told of every job that ends in this process
        self.safety: SafetyChecker | None = None
        # The safety checker has a thread of its own, so a job's check never waits behind the next batch.
        self.safety_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kleinserve-safety")

    async def load_safety_checker(self, settings: Settings) -> None:
        """Loaded before the server accepts requests; a failure stops the start-up."""
        from kleinserve.service.safety import load_safety_checker

        loop = asyncio.get_running_loop()
        self.safety = await loop.run_in_executor(self.safety_thread, load_safety_checker, settings)
        log.info("safety checker ready: %s", self.safety.describe())

    async def complete(self, work: Work, result: GenerationResult) -> None:
        """A job's images came out of the engine: screen, encode, store, record, tell its waiter."""
        job, request, output = work.job, work.request, work.output
        try:
            waited = max(0.0, (job.started_at or job.created_at) - job.created_at)
            timings = {"queue": waited, **result.timings}
            flags = await self.screen(result.images, output, timings)
            images = await self.outputs.encode_and_store(result.images, flags, request, output, timings)
            usage = request_usage(request, result.text_tokens)
            generated = Generated(job.id, job.model, result.seed, images, timings, usage)
            if not output.store:
                await self.outputs.hold_inline(generated)
            record, spent = result_record(generated), self.usage_entry(job, request, result)
            if not await self.record_end(work, JobStatus.SUCCEEDED, result=record, usage=spent):
                await self.outputs.discard(generated)  # cancelled meanwhile: its end is already recorded
                return
        except Exception as exc:
            await self.failed(work, exc)
            return
        self.metrics.observe_images(job.model, len(images), request.width, request.height)
        self.metrics.observe_usage(job.model, spent.engine_seconds, spent.cost_usd)
        self.metrics.observe_stages(
            job.model, {k: timings[k] for k in ("queue", "safety", "encode", "store") if k in timings}
        )
        self.settle(job.id, generated)

    def usage_entry(self, job: Job, request: GenerationRequest, result: GenerationResult) -> UsageEntry:
        """What the job cost, for the usage ledger: written with its end."""
        images = request.num_images
        megapixels = images * request.width * request.height / 1e6
        cost = self.prices.cost(job.model, images, megapixels)
        seconds = result.engine_seconds
        return UsageEntry(job.id, job.owner, job.model, time.time(), images, megapixels, seconds, cost)

    async def failed(self, work: Work, exc: Exception) -> None:
        """The details stay in the server log; clients get no internals."""
        log.error("generation failed for job %s", work.job_id, exc_info=exc)
        if is_disk_full(exc):
            error, raised = failure(DISK_FULL, "storage_full"), StorageFull
        else:
            message = f"generation failed ({type(exc).__name__}); the server log has details"
            error, raised = failure(message), GenerationFailed
        await self.record_end(work, JobStatus.FAILED, error=error)
        self.settle(work.job_id, error=raised(error["message"]))

    def settle(
        self, job_id: str, generated: Generated | None = None, *, error: Exception | None = None
    ) -> None:
        """The job ended here: tell the end listeners and whoever waits, and measure a detached job."""
        self.webhook_queue.wake()
        for listener in self.end_listeners:
            self.spawn(listener(job_id))
        waiter = self.waiting.pop(job_id, None)
        if waiter is None:  # a job recovered from a previous run
            return
        if error is not None:
            waiter.ended.set_exception(error)
            waiter.ended.exception()  # retrieved: detached jobs have no caller awaiting them
        else:
            waiter.ended.set_result(generated)
        if waiter.detached and not isinstance(error, JobCancelled):
            seconds = time.time() - waiter.created_at
            status = 500 if error is not None else 200
            images = len(generated.images) if generated is not None else 0
            self.stats.observe(waiter.model, seconds, seconds, status, images)

    async def screen(self, arrays: list, output: OutputOptions, timings: dict) -> list[bool]:
        """Flag unsafe images (and black them out in place) when the request asks for the checker."""
        if not output.safety_check or self.safety is None:
            return [False] * len(arrays)
        start = time.monotonic()
        loop = asyncio.get_running_loop()
        flags = await loop.run_in_executor(self.safety_thread, self.safety.flags, arrays)
        for i, flagged in enumerate(flags):
            if flagged:
                arrays[i] = np.zeros_like(arrays[i])
        timings["safety"] = time.monotonic() - start
        return flags

    async def record_end(self, work: Work, status: JobStatus, *, result=None, error=None, usage=None) -> bool:
        """The job's final state, written under its lease (False: it was no longer held, e.g. cancelled).
        With the disk full it is retried until space returns: the job must not stay "running"."""
        for delay in RECORD_RETRY_DELAYS:
            try:
                ended = await self.jobs.finish(
                    work.job_id, status, result=result, error=error, lease=work.lease, usage=usage
                )
                break
            except Exception as exc:
                if not is_disk_full(exc):
                    raise
                log.warning(
                    "could not record the end of job %s (disk full); retrying in %g s", work.job_id, delay
                )
                await asyncio.sleep(delay)
        else:
            return False
        if ended:
            self.count_end(work.job.model, status)
            await self.log_end(work.job_id, status, error)
        return ended

    def count_end(self, model: str, status: JobStatus) -> None:
        self.metrics.jobs.labels(model, status.value).inc()

    async def log_end(self, job_id: str, status: JobStatus, error: dict | None) -> None:
        message = status.value if error is None else f"{status.value}: {error['message']}"
        with contextlib.suppress(Exception):  # a log line is not worth failing over
            await self.jobs.log(job_id, message)

    def step_taken(self, job_id: str, step: int, total: int, previews: list) -> None:
        waiter = self.waiting.get(job_id)
        if waiter is not None and waiter.on_step is not None:
            waiter.on_step(step, total, previews)

    def wants_previews(self, job_id: str) -> bool:
        waiter = self.waiting.get(job_id)
        return waiter is not None and waiter.on_step is not None


class BatchEvents:
    """Batch events -> job logs, completions and metrics (the batcher's BatchListener)."""

    def __init__(self, completion: JobCompletion, model: str):
        self.completion = completion
        self.model = model
        self.worker = completion.role == "worker"
        self._previews: set[str] = set()  # worker: the running jobs whose submitter streams their steps

    def wants_previews(self, job_id: str) -> bool:
        return job_id in self._previews or self.completion.wants_previews(job_id)

    def batch_started(self, works: list[Work]) -> None:
        images = sum(w.request.num_images for w in works)
        worker_id = self.completion.worker_id
        where = f" by worker {worker_id} (pid {os.getpid()})" if worker_id else ""
        self._previews = {w.job_id for w in works if self.worker and w.job.params.get("previews")}
        for work in works:
            attempt = f" (attempt {work.job.attempts})" if work.job.attempts > 1 else ""
            message = f"started in a batch of {images} image(s){attempt}{where}"
            self.completion.spawn(self._log(work.job_id, message))

    def batch_step(self, works: list[Work], step: int, total: int, previews: dict[str, list]) -> None:
        for work in works:
            if not work.stopped:
                self.completion.spawn(self._log(work.job_id, f"step {step}/{total}"))
                self.completion.step_taken(work.job_id, step, total, previews.get(work.job_id, []))
                if self.worker:  # for the API server following it (job_watch.py)
                    self.completion.spawn(self._record_step(work, step, total, previews.get(work.job_id, [])))

    async def _record_step(self, work: Work, step: int, total: int, previews: list) -> None:
        if not await self.completion.progress.record(work.job_id, work.lease, step, total, previews):
            work.stopped = True  # cancelled or requeued: seen before the next lease renewal

    def _measure(self, work: Work) -> None:
        """Worker: a queue job's end is measured here, as --role all measures it (nobody here waits)."""
        if self.worker and work.job.detached:
            waiter = Waiter(self.model, True, None, work.job.created_at)
            self.completion.waiting.setdefault(work.job_id, waiter)

    def batch_finished(self, works: list[Work], timings: dict[str, float]) -> None:
        images = sum(w.request.num_images for w in works)
        self.completion.metrics.observe_batch(self.model, images, timings)

    def job_done(self, work: Work, result: GenerationResult) -> None:
        self._measure(work)
        self.completion.spawn(self.completion.complete(work, result))

    def job_failed(self, work: Work, error: Exception) -> None:
        self._measure(work)
        self.completion.spawn(self.completion.failed(work, error))

    async def _log(self, job_id: str, message: str) -> None:
        try:
            await self.completion.jobs.log(job_id, message)
        except Exception as exc:  # e.g. a full disk: the log line is lost, the job goes on
            log.warning("could not record a job update: %s", exc)


def failure(message: str, kind: str = "server_error") -> dict:
    return {"type": kind, "message": message, "param": None}
