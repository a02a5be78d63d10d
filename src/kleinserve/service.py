"""The image service: what every API dialect calls. It owns the served models (engine + batcher each), the
job records, image encoding and storage, and the metrics; dialects never reach those directly.

A generation: record a job -> queue it on the model's batcher -> the engine runs it in a batch on the GPU
thread -> encode (png/jpeg/webp) and store its images on worker threads -> record the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kleinserve.batcher import Batcher, Work
from kleinserve.errors import (
    BatcherFailed,
    GenerationFailed,
    JobCancelled,
    ModelNotReady,
    ModelNotServed,
    QueueFull,
    ShuttingDown,
    StorageFull,
    UnknownModel,
    is_disk_full,
)
from kleinserve.imaging import DECODE_SLOTS, decode_image
from kleinserve.jobs import Job, JobStatus, JobStore, new_job_id
from kleinserve.metrics import Metrics
from kleinserve.models import ModelSpec, resolve_model, with_local_path
from kleinserve.outbound import Outbound
from kleinserve.outputs import Generated, OutputOptions, Outputs, result_record, stored_folders
from kleinserve.request import GenerationRequest
from kleinserve.settings import Settings
from kleinserve.storage import LocalFile, Store
from kleinserve.usage import request_usage
from kleinserve.webhooks import WebhookSender

if TYPE_CHECKING:
    from kleinserve.safety import SafetyChecker

FinishCallback = Callable[[str], Awaitable[None]]
# (step, total steps, previews): called on the event loop after each denoising step of a watched job, with
# small HxWx3 uint8 pictures of the current estimate, one per image of the job.
StepListener = Callable[[int, int, list[np.ndarray]], None]

log = logging.getLogger("kleinserve")

DEMO_MODEL_ID = "flux.2-klein-4b"
BATCHER_RESTARTS = 3
DISK_FULL = "the server's disk is full, so nothing more can be recorded or stored; retry once space is freed"
SHUTDOWN = "the server is shutting down"
RECORD_RETRY_DELAYS = (0.5, 1, 2, 5, *(10,) * 60)  # about ten minutes of retries
DEMO_LABEL = "DEMO: tiny random-weight test model; its images are noise, not FLUX.2 [klein]"
INTERRUPTED = {
    "type": "server_error",
    "message": "the server stopped before this job finished; nothing was produced, submit it again",
    "param": None,
}


@dataclass
class ServedModel:
    spec: ModelSpec
    demo: bool = False
    state: str = "loading"  # loading | ready | failed
    error: str | None = None
    batcher: Batcher | None = None

    @property
    def names(self) -> list[str]:
        return [self.spec.id, *self.spec.aliases]


def served_specs(settings: Settings) -> list[tuple[ModelSpec, bool]]:
    """(spec, is_demo) for each --model ID or ID=PATH, plus the demo model. Raises UnknownModel early."""
    specs = []
    for entry in settings.models:
        name, _, path = entry.partition("=")
        spec = resolve_model(name)
        if path:
            spec = with_local_path(spec, Path(path).expanduser().resolve())
        specs.append((spec, False))
    if settings.demo:
        specs.append((with_local_path(resolve_model(DEMO_MODEL_ID), settings.demo_checkpoint_dir), True))
    ids = [spec.id for spec, _ in specs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise UnknownModel(f"model {duplicates[0]} is given twice; serve each model once")
    if not specs:
        raise UnknownModel("no model to serve: pass --model ID[=PATH] (repeatable) or --demo")
    return specs


class ImageService:
    def __init__(self, settings: Settings, jobs: JobStore, store: Store, metrics: Metrics):
        self.settings = settings
        self.jobs = jobs
        self.store = store
        self.metrics = metrics
        self.models = [ServedModel(spec, demo) for spec, demo in served_specs(settings)]
        self._by_name = {name.lower(): served for served in self.models for name in served.names}
        self._outputs = Outputs(store)
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
        self.safety: SafetyChecker | None = None
        # Each model's engine has a thread of its own (loading one model never stalls another's batches);
        # the safety checker has another, so a job's check never waits behind the next batch.
        self._engine_threads = {
            served.spec.id: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kleinserve-engine-{i}")
            for i, served in enumerate(self.models)
        }
        self._safety_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kleinserve-safety")
        self._tasks: list[asyncio.Task] = []
        self._active: dict[str, asyncio.Task[Generated]] = {}  # job id -> the task that completes it
        self._step_listeners: dict[str, StepListener] = {}  # job id -> who watches its steps
        self.shutting_down = False
        self._background: set[asyncio.Future] = set()  # fire-and-forget work (finish callbacks)

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if removed := await asyncio.to_thread(self.store.remove_partial_files):
            log.warning("removed %d half-written image file(s) left by a previous run", removed)
        interrupted = await self.jobs.fail_unfinished(INTERRUPTED)
        if interrupted:
            log.warning(
                "%d job(s) were unfinished when the server last stopped; marked failed", len(interrupted)
            )
        if self.settings.safety_checker:
            await self._load_safety_checker()
        self._tasks.append(asyncio.create_task(self._load_models(), name="load-models"))
        if self.settings.retention_hours > 0:
            self._tasks.append(asyncio.create_task(self._expire_old_jobs(), name="expire-jobs"))

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._active.values(), *self._background]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for thread in (*self._engine_threads.values(), self._safety_thread):
            thread.shutdown(wait=True, cancel_futures=True)
        self._decoder.shutdown(wait=False, cancel_futures=True)
        await self.outbound.close()

    def begin_shutdown(self, grace_s: float) -> None:
        """From now on no new work; queued jobs fail now, running batches in `grace_s` if not done."""
        if self.shutting_down:
            return
        self.shutting_down = True
        log.warning("shutting down: queued jobs fail now, running batches get %g s to finish", grace_s)
        for served in self.models:
            if served.batcher is not None:
                served.batcher.fail_queued(ShuttingDown(f"{SHUTDOWN}: this job had not started"))
        asyncio.get_running_loop().call_later(grace_s, self._stop_running_batches)

    def _stop_running_batches(self) -> None:
        for served in self.models:
            if served.batcher is not None:
                served.batcher.fail_all(ShuttingDown(f"{SHUTDOWN}: this job was stopped before it finished"))

    @property
    def ready(self) -> bool:
        return not self.shutting_down and all(served.state == "ready" for served in self.models)

    async def _load_models(self) -> None:
        from kleinserve.engine.warmup import load_engine  # torch is imported here, off the event loop

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
                _JobEvents(self, served.spec.id),
                max_batch_images=self.settings.max_batch_images,
                max_wait_s=self.settings.batch_wait_ms / 1000,
                max_queue_depth=self.settings.max_queue_depth,
            )
            self._tasks.append(asyncio.create_task(self._supervise(served), name=f"batcher-{served.spec.id}"))
            served.state = "ready"
            log.info("%s is ready%s", served.spec.id, f" ({DEMO_LABEL})" if served.demo else "")

    async def _load_safety_checker(self) -> None:
        """Loaded before the server accepts requests; a failure stops the start-up."""
        from kleinserve.safety import load_safety_checker

        loop = asyncio.get_running_loop()
        self.safety = await loop.run_in_executor(self._safety_thread, load_safety_checker, self.settings)
        log.info("safety checker ready: %s", self.safety.describe())

    async def _supervise(self, served: ServedModel) -> None:
        """Runs the model's batcher loop; if it dies (a bug), its waiting jobs fail with the reason and it is
        restarted, up to BATCHER_RESTARTS times; after that the model is failed and /ready says so."""
        for attempt in range(BATCHER_RESTARTS + 1):
            try:
                await served.batcher.run()
            except Exception as exc:
                log.exception("the batcher of %s died (attempt %d)", served.spec.id, attempt + 1)
                served.batcher.fail_all(BatcherFailed(f"the model's batcher failed ({type(exc).__name__})"))
                served.error = f"its batcher failed ({type(exc).__name__}: {exc})"
        served.state = "failed"
        log.error("%s is out of service: its batcher failed %d times", served.spec.id, BATCHER_RESTARTS + 1)

    async def _expire_old_jobs(self) -> None:
        retention = self.settings.retention_hours * 3600
        while True:
            try:
                await self.expire_jobs(time.time() - retention)
            except Exception:  # e.g. a full disk: try again next round
                log.exception("expiring old jobs failed; retrying later")
            await asyncio.sleep(min(max(retention / 4, 1.0), 600.0))

    async def expire_jobs(self, before: float) -> int:
        jobs = await self.jobs.expired(before)
        for job in jobs:
            for folder in stored_folders(job):
                await asyncio.to_thread(self.store.delete_folder, folder)
        await self.jobs.delete([job.id for job in jobs])
        self._outputs.forget([job.id for job in jobs])
        if jobs:
            log.info("expired %d job(s) and their files", len(jobs))
        return len(jobs)

    # --- models ----------------------------------------------------------------------------------

    def model(self, name: str | None) -> ServedModel:
        """The served model a request names (id or alias, any case); None means the default (first)."""
        if name is None:
            return self.models[0]
        served = self._by_name.get(name.strip().lower())
        if served is None:
            served_ids = ", ".join(m.spec.id for m in self.models)
            raise ModelNotServed(f"model '{name}' is not served here; this server serves: {served_ids}")
        return served

    def ready_batcher(self, served: ServedModel) -> Batcher:
        if served.batcher is None or served.state != "ready":
            if served.state == "failed":
                raise ModelNotReady(f"{served.spec.id} is out of service: {served.error}")
            raise ModelNotReady(f"{served.spec.id} is still loading; retry shortly")
        return served.batcher

    # --- generation ------------------------------------------------------------------------------

    async def submit(
        self,
        served: ServedModel,
        request: GenerationRequest,
        output: OutputOptions,
        params: dict,
        *,
        on_finish: FinishCallback | None = None,
        on_step: StepListener | None = None,
        detached: bool = False,
        owner: str | None = None,
    ) -> Job:
        """Record a job and queue it; it runs in the background. `on_finish(job_id)` is awaited once the
        job has ended (succeeded, failed or cancelled) and its record is final; `on_step` hears each
        denoising step, with previews. A detached job (a queue submission) has no HTTP request waiting on
        it, so its latency is measured here instead."""
        if self.shutting_down:
            raise ShuttingDown(f"{SHUTDOWN}; retry in a moment (another replica, or this one restarted)")
        batcher = self.ready_batcher(served)
        batcher.check_room()  # QueueFull before anything is recorded
        params = {**params, **_describe(request), "output_format": output.format}
        job = Job(new_job_id(), served.spec.id, params, owner=owner)
        queued = f"queued behind {batcher.depth} job(s)"
        job.logs.append({"timestamp": time.time(), "level": "INFO", "message": queued})
        await self._record(self.jobs.add(job))  # recorded before it can run: no work without a record
        try:
            future = batcher.submit(job.id, request, previews=on_step is not None)
        except QueueFull as exc:  # filled up while the record was written
            await self._record_end(job.id, job.model, JobStatus.FAILED, error=_failure(str(exc)))
            raise
        task = asyncio.create_task(self._complete(job, future, request, output), name=f"job-{job.id}")
        self._active[job.id] = task
        if on_step is not None:
            self._step_listeners[job.id] = on_step
        measured = (served.spec.id, time.monotonic()) if detached else None
        task.add_done_callback(partial(self._job_ended, job.id, on_finish, measured))
        return job

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
        task = self._active[job.id]  # taken now: the task leaves _active as soon as it ends
        batcher = self._by_name[job.model.lower()].batcher

        async def wait() -> Generated:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                batcher.cancel(job.id, "the client went away before the job finished")
                raise

        return wait()

    async def cancel(self, job_id: str) -> str | None:
        """ "requested" (the job ends as cancelled), "finished" (too late), or None for an unknown job."""
        job = await self.jobs.get(job_id)
        if job is None:
            return None
        served = self._by_name.get(job.model.lower())
        if job.status.finished or served is None or served.batcher is None:
            return "finished"
        if not served.batcher.cancel(job_id, "cancelled at the client's request"):
            return "finished"  # its images are being encoded; it is about to succeed
        return "requested"

    def step_taken(self, job_id: str, step: int, total: int, previews: list) -> None:
        if (listener := self._step_listeners.get(job_id)) is not None:
            listener(step, total, previews)

    async def queue_position(self, job: Job) -> int | None:
        """0-based place among its model's queued jobs; None once it has left the queue."""
        served = self._by_name.get(job.model.lower())
        return served.batcher.position(job.id) if served and served.batcher else None

    async def _complete(
        self, job: Job, future: asyncio.Future, request: GenerationRequest, output: OutputOptions
    ) -> Generated:
        queued_at = time.monotonic()
        try:
            result = await future
            waited = time.monotonic() - queued_at - sum(result.timings.values())
            timings = {"queue": max(0.0, waited), **result.timings}
            flags = await self._screen(result.images, output, timings)
            images = await self._outputs.encode_and_store(result.images, flags, request, output, timings)
        except JobCancelled as exc:
            await self._record_end(job.id, job.model, JobStatus.CANCELLED, error=_cancelled(str(exc)))
            raise
        except ShuttingDown as exc:
            await self._record_end(
                job.id, job.model, JobStatus.FAILED, error=_failure(str(exc), "shutting_down")
            )
            raise
        except Exception as exc:  # the details stay in the server log; clients get no internals
            log.exception("generation failed for job %s", job.id)
            if is_disk_full(exc):
                error = _failure(DISK_FULL, "storage_full")
            else:
                error = _failure(f"generation failed ({type(exc).__name__}); the server log has details")
            await self._record_end(job.id, job.model, JobStatus.FAILED, error=error)
            raise (StorageFull if is_disk_full(exc) else GenerationFailed)(error["message"]) from exc
        self.metrics.observe_images(job.model, len(images), request.width, request.height)
        self.metrics.observe_stages(
            job.model, {k: timings[k] for k in ("queue", "safety", "encode", "store") if k in timings}
        )
        usage = request_usage(request, result.text_tokens)
        generated = Generated(job.id, job.model, result.seed, images, timings, usage)
        if not output.store:
            self._outputs.hold_inline(generated)
        await self._record_end(job.id, job.model, JobStatus.SUCCEEDED, result=result_record(generated))
        return generated

    def _job_ended(self, job_id: str, on_finish: FinishCallback | None, measured, task: asyncio.Task) -> None:
        self._active.pop(job_id, None)
        self._step_listeners.pop(job_id, None)
        if task.cancelled():  # the server is stopping
            return
        error = task.exception()  # retrieved here: queue jobs have no caller awaiting them
        if measured is not None and not isinstance(error, JobCancelled):
            model, start = measured
            seconds = time.monotonic() - start
            self.metrics.observe_generation_request(model, seconds, seconds, 500 if error else 200)
        if on_finish is not None:
            self._spawn(on_finish(job_id))

    async def _screen(self, arrays: list, output: OutputOptions, timings: dict) -> list[bool]:
        """Flag unsafe images (and black them out in place) when the request asks for the checker."""
        if not output.safety_check or self.safety is None:
            return [False] * len(arrays)
        start = time.monotonic()
        loop = asyncio.get_running_loop()
        flags = await loop.run_in_executor(self._safety_thread, self.safety.flags, arrays)
        for i, flagged in enumerate(flags):
            if flagged:
                arrays[i] = np.zeros_like(arrays[i])
        timings["safety"] = time.monotonic() - start
        return flags

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _record(self, write: Awaitable) -> None:
        """A job-store write; a full disk becomes StorageFull (507, retry later) instead of a crash."""
        try:
            await write
        except Exception as exc:
            if is_disk_full(exc):
                raise StorageFull(DISK_FULL) from exc
            raise

    async def _record_end(
        self, job_id: str, model: str, status: JobStatus, *, result=None, error=None
    ) -> None:
        """The job's final state. With the disk full it is retried until space returns (the job must not
        stay "running"); if the server stops first, the next start marks it failed."""
        self.metrics.jobs.labels(model, status.value).inc()
        for delay in RECORD_RETRY_DELAYS:
            try:
                await self.jobs.finish(job_id, status, result=result, error=error)
                break
            except Exception as exc:
                if not is_disk_full(exc):
                    raise
                log.warning("could not record the end of job %s (disk full); retrying in %g s", job_id, delay)
                await asyncio.sleep(delay)
        message = status.value if error is None else f"{status.value}: {error['message']}"
        with contextlib.suppress(Exception):  # a log line is not worth failing over
            await self.jobs.log(job_id, message)

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

    async def job(self, job_id: str) -> Job | None:
        return await self.jobs.get(job_id)

    async def owned_job(self, job_id: str, owner: str | None) -> Job | None:
        """The job, if `owner` made it: another API key's job is as unknown as a missing one."""
        job = await self.jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    async def result(self, job: Job) -> Generated:
        """The images of a succeeded job (raises ResultGone for inline images no longer held)."""
        return await self._outputs.rebuild(job)


class _JobEvents:
    """Batch events -> job logs, job status and metrics."""

    def __init__(self, service: ImageService, model: str):
        self.service = service
        self.model = model
        self._pending: set[asyncio.Future] = set()  # keeps fire-and-forget record updates alive

    def batch_started(self, works: list[Work]) -> None:
        images = sum(w.request.num_images for w in works)
        for work in works:
            self._spawn(self.service.jobs.mark_running(work.job_id))
            self._spawn(self.service.jobs.log(work.job_id, f"started in a batch of {images} image(s)"))

    def batch_step(self, works: list[Work], step: int, total: int, previews: dict[str, list]) -> None:
        for work in works:
            self._spawn(self.service.jobs.log(work.job_id, f"step {step}/{total}"))
            if not work.future.done():
                self.service.step_taken(work.job_id, step, total, previews.get(work.job_id, []))

    def batch_finished(self, works: list[Work], timings: dict[str, float]) -> None:
        images = sum(w.request.num_images for w in works)
        self.service.metrics.observe_batch(self.model, images, timings)

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._pending.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:  # e.g. a full disk: the log line is lost
            log.warning("could not record a job update: %s", task.exception())


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


def _failure(message: str, kind: str = "server_error") -> dict:
    return {"type": kind, "message": message, "param": None}


def _cancelled(message: str) -> dict:
    return {"type": "cancelled", "message": message, "param": None}
