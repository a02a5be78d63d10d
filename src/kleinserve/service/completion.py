"""A job's end in this process: its images came out of the engine -> screen, encode, store, record, tell
whoever waits.

`JobCompletion` takes a job from the engine's result (or its failure) to its final record, written under
the batch's lease, and then settles it: the end listeners hear of it and its waiter here (waiters.py) gets
the job's `Outcome`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial

from kleinserve.errors import DatabaseUnavailable, StoreUnavailable, is_disk_full
from kleinserve.job import Job, JobStatus, UsageEntry
from kleinserve.jobs.batcher import Work
from kleinserve.jobs.contract import JobStore
from kleinserve.metrics import Metrics
from kleinserve.pricing import Prices
from kleinserve.request import GenerationRequest, GenerationResult
from kleinserve.service.background import Background
from kleinserve.service.outcome import DISK_FULL, STORAGE_FULL, JobError, Outcome
from kleinserve.service.outputs import Generated, Outputs, result_record
from kleinserve.service.safety import SafetyScreen
from kleinserve.service.waiters import Waiters
from kleinserve.usage import request_usage

log = logging.getLogger("kleinserve")

# A job's end while the job database is away (or its disk full): about ten minutes of retries. Each write
# names the lease, so one that comes after the job was requeued (its lease expired) changes nothing.
RECORD_RETRY_DELAYS = (0.5, 1, 1, 2, 2, 5, *(10,) * 60)
# Its images while the image store is away: about 40 s, renewing the lease before each retry.
STORE_RETRY_DELAYS = (0.5, 1, 2, 4, 8, 8, 8, 8)


class LeaseLost(Exception):
    """The job is no longer leased to this process (requeued, or cancelled): what it made is dropped."""


class JobCompletion:
    def __init__(
        self,
        jobs: JobStore,
        outputs: Outputs,
        metrics: Metrics,
        prices: Prices,
        waiters: Waiters,
        background: Background,
        screen: SafetyScreen | None = None,
        lease_s: float = 30.0,
    ):
        """`screen`: the safety checker, where models run here (None: nothing is screened); `lease_s`:
        how long a renewal holds a job (--job-lease-s), renewed while its images' store is retried."""
        self.jobs = jobs
        self.lease_s = lease_s
        self.outputs = outputs
        self.metrics = metrics
        self.prices = prices
        self.waiters = waiters
        self.background = background
        self.screen = screen
        self.end_listeners: list[Callable[[str], None]] = []  # told the id of every job that ends here

    async def complete(self, work: Work, result: GenerationResult) -> None:
        """A job's images came out of the engine: screen, encode, store, record, tell its waiter."""
        job, request, output = work.job, work.request, work.output
        try:
            waited = max(0.0, (job.started_at or job.created_at) - job.created_at)
            timings = {"queue": waited, **result.timings}
            flags = [False] * len(result.images)
            if self.screen is not None:
                flags = await self.screen.screen(result.images, output, timings)
            retrying = partial(self._retrying, work, STORE_RETRY_DELAYS, StoreUnavailable)
            images = await self.outputs.encode_and_store(
                result.images, flags, request, output, timings, retrying=retrying
            )
            usage = request_usage(request, result.text_tokens)
            generated = Generated(job.id, job.model, result.seed, images, timings, usage)
            if not output.store:
                hold = partial(self.outputs.hold_inline, generated, work.lease)
                if not await self._retrying(work, RECORD_RETRY_DELAYS, DatabaseUnavailable, hold):
                    raise LeaseLost
            record, spent = result_record(generated), self.usage_entry(job, request, result)
            if not await self.record_end(work, JobStatus.SUCCEEDED, result=record, usage=spent):
                await self.outputs.discard(generated)  # requeued or cancelled meanwhile: not its result
                raise LeaseLost
        except LeaseLost:
            log.warning("job %s is no longer leased here (requeued or cancelled): images dropped", job.id)
            return
        except Exception as exc:
            await self.failed(work, exc)
            return
        self.metrics.observe_images(job.model, len(images), request.width, request.height)
        self.metrics.observe_usage(job.model, spent.engine_seconds, spent.cost_usd)
        self.metrics.observe_stages(
            job.model, {k: timings[k] for k in ("queue", "safety", "encode", "store") if k in timings}
        )
        self.settle(job.id, Outcome(generated))

    async def _retrying(self, work: Work, delays: tuple, transient: type[Exception], call):
        """`call()` again after each `transient` failure, after `delays`, while the lease holds the job: it
        is renewed meanwhile (every lease_s/3, as while the batch ran); LeaseLost once it no longer holds
        the job. The last failure raises."""
        lost = asyncio.Event()
        keeping = asyncio.create_task(self._keep_lease(work, lost))
        try:
            for delay in (*delays, None):
                try:
                    return await call()
                except transient as exc:
                    if delay is None:
                        raise
                    log.warning("job %s: %s; retrying in %g s", work.job_id, exc, delay)
                await asyncio.sleep(delay)
                if lost.is_set():
                    raise LeaseLost
        finally:
            keeping.cancel()

    async def _keep_lease(self, work: Work, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                held = await self.jobs.renew(work.lease, self.lease_s)
            except DatabaseUnavailable:
                continue  # nobody can requeue it meanwhile either
            if work.job_id not in held:
                lost.set()
                return

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
            error = JobError(STORAGE_FULL, DISK_FULL)
        else:
            error = JobError(
                "server_error", f"generation failed ({type(exc).__name__}); the server log has details"
            )
        await self.record_end(work, JobStatus.FAILED, error=error)
        self.settle(work.job_id, Outcome(error=error))

    async def fail_queued(self, job_id: str, model: str, error: JobError) -> None:
        """Fail the job if it has not started yet (its caller here is going away)."""
        if await self.jobs.finish(job_id, JobStatus.FAILED, error=error.record(), only_queued=True):
            self.count_end(model, JobStatus.FAILED)
            self.settle(job_id, Outcome(error=error))

    def settle(self, job_id: str, outcome: Outcome) -> None:
        """The job ended here: tell the end listeners and whoever waits."""
        for listener in self.end_listeners:
            listener(job_id)
        self.waiters.settle(job_id, outcome)

    async def record_end(
        self, work: Work, status: JobStatus, *, result=None, error: JobError | None = None, usage=None
    ) -> bool:
        """The job's final state, written under its lease (False: it was no longer held, e.g. cancelled).
        With the disk full it is retried until space returns: the job must not stay "running"."""
        record = error.record() if error is not None else None
        for delay in RECORD_RETRY_DELAYS:
            try:
                ended = await self.jobs.finish(
                    work.job_id, status, result=result, error=record, lease=work.lease, usage=usage
                )
                break
            except Exception as exc:
                if not (is_disk_full(exc) or isinstance(exc, DatabaseUnavailable)):
                    raise
                why = "disk full" if is_disk_full(exc) else "the job database is unreachable"
                log.warning("could not record the end of job %s (%s); retry in %g s", work.job_id, why, delay)
                await asyncio.sleep(delay)
        else:
            return False
        if ended:
            self.count_end(work.job.model, status)
        return ended

    def count_end(self, model: str, status: JobStatus) -> None:
        self.metrics.jobs.labels(model, status.value).inc()
