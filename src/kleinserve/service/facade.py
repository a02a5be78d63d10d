"""The image service: what every API dialect calls. It owns the served models (engine + batcher each), the
job records, image encoding and storage, and the metrics; dialects never reach those directly.

A generation: record the job with its inputs (the job store is the queue) -> the model's batcher claims
it in a batch and runs it on the model's engine thread -> screen, encode (png/jpeg/webp) and store its
images off that thread -> record the result under the batch's lease -> wake whoever waits in this
process. A job's record is its truth: after a crash, detached (queue) jobs run again from their stored
inputs, and jobs whose caller is gone fail (jobs.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from kleinserve.batch_policy import batch_key
from kleinserve.errors import (
    BatcherFailed,
    JobCancelled,
    ModelNotReady,
    ModelNotServed,
    QueueFull,
    ShuttingDown,
    StorageFull,
    is_disk_full,
)
from kleinserve.imaging import DECODE_SLOTS, decode_image
from kleinserve.job import Job, JobStatus, new_job_id
from kleinserve.jobs.batcher import Batcher
from kleinserve.jobs.contract import JobStore
from kleinserve.jobs.inputs import pack_inputs
from kleinserve.metrics import Metrics
from kleinserve.pricing import Prices
from kleinserve.request import GenerationRequest, OutputOptions
from kleinserve.service.completion import (
    DISK_FULL,
    BatchEvents,
    EndListener,
    JobCompletion,
    StepListener,
    Waiter,
    failure,
)
from kleinserve.service.housekeeping import Housekeeping
from kleinserve.service.outbound import Outbound
from kleinserve.service.outputs import Generated, Outputs
from kleinserve.service.served_models import DEMO_LABEL, ServedModel, served_specs
from kleinserve.service.stats import RequestStats
from kleinserve.service.watch import follow, outcome_of
from kleinserve.service.webhook_queue import WebhookQueue
from kleinserve.service.webhooks import WebhookSender
from kleinserve.service.worker_models import WorkerModels
from kleinserve.settings import Settings
from kleinserve.storage.store import LocalFile, Store

if TYPE_CHECKING:
    from kleinserve.service.safety import SafetyChecker

log = logging.getLogger("kleinserve")

BATCHER_RESTARTS = 3
SHUTDOWN = "the server is shutting down"


class ImageService:
    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        store: Store,
        metrics: Metrics,
        *,
        role: str | None = None,
        worker_id: str | None = None,
    ):
        """`role`: "all" (HTTP and models, the default), "api" (HTTP; workers run the models, listed from
        their heartbeats) or "worker" (models only; worker.py, whose id goes into its jobs' logs)."""
        self.settings = settings
        self.role = role or settings.role
        self.worker_id = worker_id
        self.jobs = jobs
        self.store = store
        self.metrics = metrics
        self.prices = Prices(settings.prices)
        self.stats = RequestStats(jobs, metrics, settings.stats_window_seconds)
        self.worker_models = None
        if self.role == "api":
            self.worker_models = WorkerModels(
                jobs, heartbeat_s=settings.worker_heartbeat_s, ttl_s=settings.worker_ttl_s
            )
        self._models = [] if self.worker_models else [ServedModel(*each) for each in served_specs(settings)]
        self._by_name = {name.lower(): served for served in self._models for name in served.names}
        self._outputs = Outputs(store, jobs, settings.inline_result_ttl_s)
        # Reference images decode here, DECODE_SLOTS at a time: what bounds their memory (imaging.py).
        self._decoder = ThreadPoolExecutor(max_workers=DECODE_SLOTS, thread_name_prefix="kleinserve-decode")
        self.outbound = Outbound(
            settings.allowed_private_networks,
            max_bytes=settings.max_image_bytes,
            timeout_s=settings.image_fetch_timeout_s,
            decoder=self._decoder,
        )
        self.webhooks = WebhookSender(
            self.outbound,
            jobs.log,
            attempts=settings.webhook_attempts,
            retry_base_s=settings.webhook_retry_base_s,
            timeout_s=settings.webhook_timeout_s,
        )
        self.webhook_queue = WebhookQueue(
            jobs,
            attempts=settings.webhook_attempts,
            timeout_s=settings.webhook_timeout_s,
            retry_base_s=settings.webhook_retry_base_s,
        )
        self._waiting: dict[str, Waiter] = {}  # job id -> who in this process waits for its end
        self._background: set[asyncio.Future] = set()  # fire-and-forget work (completions, callbacks)
        self._completion = JobCompletion(
            jobs, self._outputs, metrics, self.prices, self.stats, self.webhook_queue,
            waiting=self._waiting, spawn=self._spawn, role=self.role, worker_id=worker_id,
        )  # fmt: skip
        self.housekeeping = Housekeeping(
            jobs, store, lease_s=settings.job_lease_s, max_attempts=settings.max_attempts,
            settle=self._completion.settle, wake=self._wake_batchers,
        )  # fmt: skip
        # Each model's engine has a thread of its own (loading one model never stalls another's batches).
        self._engine_threads = {
            served.spec.id: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kleinserve-engine-{i}")
            for i, served in enumerate(self.models)
        }
        self._tasks: list[asyncio.Task] = []
        self.shutting_down = False

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.role == "all":  # alone with its files: what it finds half done is its own
            if removed := await asyncio.to_thread(self.store.remove_partial_files):
                log.warning("removed %d half-written image file(s) left by a previous run", removed)
            await self._recover()
        if self.worker_models is not None:
            await self.worker_models.refresh()
            self._tasks.append(asyncio.create_task(self.worker_models.keep_fresh(), name="worker-models"))
        else:
            if self.settings.safety_checker:
                await self._completion.load_safety_checker(self.settings)
            self._tasks.append(asyncio.create_task(self._load_models(), name="load-models"))
        requeue = self.housekeeping.requeue_expired_leases()
        self._tasks.append(asyncio.create_task(requeue, name="requeue-expired"))
        if self.role != "worker":  # webhooks and retention: API servers
            self._tasks.append(asyncio.create_task(self.webhook_queue.run(), name="webhooks"))
            if self.settings.retention_hours > 0:
                expire = self.housekeeping.expire_old_jobs(self.settings.retention_hours * 3600)
                self._tasks.append(asyncio.create_task(expire, name="expire-jobs"))
        self._tasks.append(asyncio.create_task(self.stats.forget_old_samples(), name="forget-samples"))

    async def _recover(self) -> None:
        """Jobs the last process left: the SQLite store is this process's alone (its data dir is locked), so
        every running lease is dead. Detached jobs run again; jobs whose caller went with that process fail.
        A shared database (--database-url) has other live processes: only expired leases are dead there
        (the periodic requeue), and a queued job's caller may be waiting on another server."""
        if self.settings.database_url:
            return
        requeued, failed = await self.jobs.requeue_expired(math.inf, self.settings.max_attempts)
        failed += await self.jobs.fail_waiting()
        if requeued or failed:
            log.warning(
                "the server stopped last time with jobs unfinished: %d queued again, %d failed "
                "(their callers are gone, or they ran out of attempts)",
                len(requeued), len(failed),
            )  # fmt: skip

    async def stop(self) -> None:
        await self.webhook_queue.stop()  # a delivery cut short is sent again once its lease runs out
        tasks = [*self._tasks, *self._background]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for thread in (*self._engine_threads.values(), self._completion.safety_thread):
            thread.shutdown(wait=True, cancel_futures=True)
        self._decoder.shutdown(wait=False, cancel_futures=True)
        await self.outbound.close()

    def begin_shutdown(self, grace_s: float) -> None:
        """From now on no new work. Queued jobs a caller here waits for fail now; detached (queue) jobs stay
        queued for the next start. Running batches get `grace_s` to finish, then stop: their detached
        jobs go back to the queue, the others fail."""
        if self.shutting_down:
            return
        self.shutting_down = True
        log.warning("shutting down: waiting callers' queued jobs fail now, running batches get %g s", grace_s)
        for served in self.models:
            if served.batcher is not None:
                served.batcher.drain()
        error = failure(f"{SHUTDOWN}: this job had not started", "shutting_down")
        for job_id, waiter in list(self._waiting.items()):
            if not waiter.detached:
                self._spawn(self._fail_if_queued(job_id, waiter.model, error))
        asyncio.get_running_loop().call_later(grace_s, lambda: self._spawn(self._stop_running_batches()))

    async def _fail_if_queued(self, job_id: str, model: str, error: dict) -> None:
        if await self.jobs.finish(job_id, JobStatus.FAILED, error=error, only_queued=True):
            self._completion.count_end(model, JobStatus.FAILED)
            await self._completion.log_end(job_id, JobStatus.FAILED, error)
            self._completion.settle(job_id, error=ShuttingDown(error["message"]))

    async def _stop_running_batches(self) -> None:
        error = failure(f"{SHUTDOWN}: this job was stopped before it finished", "shutting_down")
        for served in self.models:
            if served.batcher is None:
                continue
            works = served.batcher.stop_running()
            for lease in {work.lease for work in works}:
                await self.jobs.release(lease)  # detached jobs run again at the next start
            for work in works:
                if work.job.detached or self.role == "worker":  # another worker's caller may wait for it
                    self._waiting.pop(work.job_id, None)  # it has not ended: it runs after the restart
                else:
                    await self._completion.record_end(work, JobStatus.FAILED, error=error)
                    self._completion.settle(work.job_id, error=ShuttingDown(error["message"]))

    @property
    def ready(self) -> bool:
        if self.worker_models is not None:  # --role api: ready once a worker serves something
            return not self.shutting_down and any(served.state == "ready" for served in self.models)
        return not self.shutting_down and all(served.state == "ready" for served in self.models)

    @property
    def safety(self) -> SafetyChecker | None:
        return self._completion.safety

    @property
    def models(self) -> list[ServedModel]:
        return self.worker_models.models if self.worker_models is not None else self._models

    async def settled(self, timeout: float) -> None:
        """After begin_shutdown: until the batchers stopped and their last results are recorded (or
        `timeout`)."""
        batchers = [task for task in self._tasks if task.get_name().startswith("batcher-")]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.gather(*batchers, return_exceptions=True)
                while self._background:
                    await asyncio.gather(*list(self._background), return_exceptions=True)

    async def _load_models(self) -> None:
        from kleinserve.service.engine_startup import load_engine  # torch is imported here, off the event loop

        loop = asyncio.get_running_loop()
        for served in self.models:
            try:
                engine = await loop.run_in_executor(
                    self._engine_threads[served.spec.id], load_engine, served.spec, self.settings, served.demo
                )
            except Exception as exc:
                served.state, served.error = "failed", f"it failed to load ({type(exc).__name__}: {exc})"
                log.error("could not load %s: %s", served.spec.id, served.error)
                continue
            served.batcher = Batcher(
                engine,
                self._engine_threads[served.spec.id],
                self.jobs,
                BatchEvents(self._completion, served.spec.id),
                max_batch_images=self.settings.max_batch_images,
                max_wait_s=self.settings.batch_wait_ms / 1000,
                lease_s=self.settings.job_lease_s,
            )
            self._tasks.append(asyncio.create_task(self._supervise(served), name=f"batcher-{served.spec.id}"))
            served.state = "ready"
            log.info("%s is ready%s", served.spec.id, f" ({DEMO_LABEL})" if served.demo else "")

    async def _supervise(self, served: ServedModel) -> None:
        """Runs the model's batcher loop; if it dies (a bug), the batch it held fails with the reason and it
        is restarted, up to BATCHER_RESTARTS times; after that the model is failed and /ready says so."""
        for attempt in range(BATCHER_RESTARTS + 1):
            try:
                await served.batcher.run()
                return  # drained: the server is stopping
            except Exception as exc:
                log.exception("the batcher of %s died (attempt %d)", served.spec.id, attempt + 1)
                message = f"the model's batcher failed ({type(exc).__name__})"
                for work in served.batcher.stop_running():
                    await self._completion.failed(work, BatcherFailed(message))
                served.error = f"its batcher failed ({type(exc).__name__}: {exc})"
        served.state = "failed"
        log.error("%s is out of service: its batcher failed %d times", served.spec.id, BATCHER_RESTARTS + 1)

    def _wake_batchers(self) -> None:
        for served in self.models:
            if served.batcher is not None:
                served.batcher.wake()

    # --- models ----------------------------------------------------------------------------------

    def model(self, name: str | None) -> ServedModel:
        """The served model a request names (id or alias, any case); None means the default (first)."""
        if self.worker_models is not None:
            return self.worker_models.model(name)
        if name is None:
            return self.models[0]
        served = self._by_name.get(name.strip().lower())
        if served is None:
            served_ids = ", ".join(m.spec.id for m in self.models)
            raise ModelNotServed(f"model '{name}' is not served here; this server serves: {served_ids}")
        return served

    def ready_batcher(self, served: ServedModel) -> Batcher | None:
        """The model's batcher (None in --role api, where workers run it); ModelNotReady unless ready."""
        if served.state == "ready" and self.worker_models is not None:
            return None
        if served.batcher is None or served.state != "ready":
            if served.state == "failed":
                raise ModelNotReady(f"{served.spec.id} is out of service: {served.error}")
            raise ModelNotReady(f"{served.spec.id} is still loading; retry shortly")
        return served.batcher

    async def queue_depths(self) -> dict[str, int]:
        """Queued jobs per served model."""
        return {served.spec.id: await self.jobs.queue_depth(served.spec.id) for served in self.models}

    async def stats_report(self) -> dict:
        """Per served model, from every API server's requests: what /v1/stats and /status show."""
        return await self.stats.report([served.spec.id for served in self.models], await self.queue_depths())

    # --- generation ------------------------------------------------------------------------------

    async def submit(
        self,
        served: ServedModel,
        request: GenerationRequest,
        output: OutputOptions,
        params: dict,
        *,
        on_step: StepListener | None = None,
        detached: bool = False,
        owner: str | None = None,
        webhook: str | None = None,
    ) -> Job:
        """Record a job with its inputs: from then on it is queued, and runs even if this process dies
        (when `detached`: a queue submission nobody here waits on). `on_step` hears each denoising step,
        with previews. `webhook`: where the dialect's webhook sender reports the job's end."""
        if self.shutting_down:
            raise ShuttingDown(f"{SHUTDOWN}; retry in a moment (another replica, or this one restarted)")
        batcher = self.ready_batcher(served)
        params = {**params, **_describe(request), "output_format": output.format}
        if on_step is not None:
            params["previews"] = True  # the worker that runs it records step previews
        job = Job(
            new_job_id(),
            served.spec.id,
            params,
            owner=owner,
            batch_key=batch_key(served.spec, request),
            num_images=request.num_images,
            detached=detached,
            webhook=webhook,
        )
        inputs = await asyncio.to_thread(pack_inputs, request, output)
        depth = await self.jobs.queue_depth(served.spec.id)
        job.logs.append(
            {"timestamp": time.time(), "level": "INFO", "message": f"queued behind {depth} job(s)"}
        )
        waited = not (detached and batcher is None)  # a worker's job nobody here waits on: not followed
        if waited:
            self._waiting[job.id] = Waiter(served.spec.id, detached, on_step, job.created_at)
        try:
            added = await self._record(self.jobs.add(job, inputs, max_queued=self.settings.max_queue_depth))
        except BaseException:
            self._waiting.pop(job.id, None)
            raise
        if not added:
            self._waiting.pop(job.id, None)
            raise QueueFull(served.spec.id, depth, self._retry_after(served, batcher, depth))
        if batcher is not None:
            batcher.wake()
        elif waited:
            self._spawn(self._follow(job.id))
        return job

    async def _follow(self, job_id: str) -> None:
        """--role api: a worker runs the job; its steps and end come from the job store (job_watch.py)."""
        waiter = self._waiting[job_id]
        job = await follow(self.jobs, job_id, waiter.on_step, lambda: job_id in self._waiting)
        if job_id in self._waiting:  # not settled here meanwhile (a cancel)
            generated, error = await outcome_of(job, self._outputs)
            self._completion.settle(job_id, generated, error=error)

    def _retry_after(self, served: ServedModel, batcher: Batcher | None, depth: int) -> int:
        if batcher is None:
            return self.worker_models.retry_after(served.spec.id, depth)
        batches_ahead = math.ceil((depth + 1) / batcher.max_batch_images)
        return max(1, math.ceil(batches_ahead * batcher.seconds_per_batch))

    async def generate(
        self,
        served: ServedModel,
        request: GenerationRequest,
        output: OutputOptions,
        params: dict,
        *,
        on_step: StepListener | None = None,
        owner: str | None = None,
    ) -> Generated:
        """Run one request as a job and return its encoded images (stored unless output.store is False)."""
        job = await self.submit(served, request, output, params, on_step=on_step, owner=owner)
        return await self.outcome(job)

    def outcome(self, job: Job) -> Awaitable[Generated]:
        """The outcome of a job just submitted, for a caller that waits on it. If that caller goes away
        (is cancelled), the job is cancelled too: nobody waits for it any more."""
        ended = self._waiting[job.id].ended  # taken now: the waiter leaves as soon as the job ends

        async def wait() -> Generated:
            try:
                return await asyncio.shield(ended)
            except asyncio.CancelledError:
                self._spawn(self._cancel(job.id, "the client went away before the job finished"))
                raise

        return wait()

    async def cancel(self, job_id: str) -> str | None:
        """ "requested" (the job ends as cancelled), "finished" (too late), or None for an unknown job."""
        return await self._cancel(job_id, "cancelled at the client's request")

    async def _cancel(self, job_id: str, reason: str) -> str | None:
        outcome = await self.jobs.cancel(job_id, failure(reason, "cancelled"))
        if outcome != "cancelled":
            return outcome
        job = await self.jobs.get(job_id)
        self._completion.count_end(job.model, JobStatus.CANCELLED)
        if (served := self._by_name.get(job.model.lower())) and served.batcher:
            served.batcher.stop_job(job_id)  # its batch stops at the next step once none of it is wanted
        self._completion.settle(job_id, error=JobCancelled(reason))
        return "requested"

    def on_job_end(self, listener: EndListener) -> None:
        """`await listener(job_id)` once each job ends in this process (its record final), including jobs
        recovered from a previous run."""
        self._completion.end_listeners.append(listener)

    def step_taken(self, job_id: str, step: int, total: int, previews: list) -> None:
        self._completion.step_taken(job_id, step, total, previews)

    def wants_previews(self, job_id: str) -> bool:
        return self._completion.wants_previews(job_id)

    async def queue_position(self, job: Job) -> int | None:
        """0-based place among its model's queued jobs; None once it has left the queue."""
        return await self.jobs.queue_position(job.id)

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Future) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed", exc_info=task.exception())

    async def _record(self, write: Awaitable):
        """A job-store write; a full disk becomes StorageFull (507, retry later) instead of a crash."""
        try:
            return await write
        except Exception as exc:
            if is_disk_full(exc):
                raise StorageFull(DISK_FULL) from exc
            raise

    # --- references and webhooks ----------------------------------------------------------------

    async def decode_reference(self, data: bytes, name: str, field: str):
        """An uploaded reference image, decoded and reduced to what the engine uses."""
        return await asyncio.get_running_loop().run_in_executor(
            self._decoder, decode_image, data, name, field
        )

    async def fetch_reference(self, url: object, field: str):
        """A reference image from an http(s) URL or a data URI, decoded and reduced; InvalidRequest naming
        `field` when it cannot be had."""
        return await self.outbound.fetch_image(url, field)

    async def check_webhook_address(self, host: str, port: int | None, field: str) -> None:
        """InvalidRequest naming `field` unless the host is one this server may call."""
        await self.outbound.checked_address(host, port, field)

    async def deliver_webhook(self, job_id: str, url: str, body: dict) -> bool:
        """POST `body` to `url` with retries, logging each attempt on the job."""
        return await self.webhooks.deliver(job_id, url, body)

    # --- files and jobs --------------------------------------------------------------------------

    def file_url(self, key: str, base_url: str) -> str:
        return self.store.url(key, self.settings.public_base_url or base_url)

    def local_file(self, key: str) -> LocalFile | None:
        return self.store.local_file(key)

    async def file_redirect(self, key: str) -> str | None:
        """Where GET /files/{key} sends its client when images live elsewhere (S3); None: nowhere."""
        return await asyncio.to_thread(self.store.redirect_url, key)

    async def job(self, job_id: str) -> Job | None:
        return await self.jobs.get(job_id)

    async def owned_job(self, job_id: str, owner: str | None) -> Job | None:
        """The job, if `owner` made it: another API key's job is as unknown as a missing one."""
        job = await self.jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    async def recent_jobs(self, owner: str | None, status: JobStatus | None, limit: int) -> list[Job]:
        return await self.jobs.recent(owner, status, limit)

    async def usage(self, owner: str | None, **filters) -> list[dict]:
        """The usage ledger's sums per UTC day, owner and model (JobStore.usage_by_day's filters)."""
        return await self.jobs.usage_by_day(owner, **filters)

    async def result(self, job: Job) -> Generated:
        """The images of a succeeded job (raises ResultGone for inline images no longer kept)."""
        return await self._outputs.rebuild(job)


def _describe(request: GenerationRequest) -> dict:
    return {
        "prompt": request.prompt,
        "width": request.width,
        "height": request.height,
        "steps": request.steps,
        "guidance": request.guidance,
        "seed": request.seed,
        "num_images": request.num_images,
        "reference_images": len(request.images),
        "negative_prompt": request.negative_prompt,
    }
