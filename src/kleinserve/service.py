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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kleinserve.batcher import Batcher, Work
from kleinserve.errors import KleinserveError, UnknownModel
from kleinserve.imaging import encode_image
from kleinserve.jobs import Job, JobStatus, JobStore, new_job_id
from kleinserve.metrics import Metrics
from kleinserve.models import ModelSpec, resolve_model, with_local_path
from kleinserve.request import GenerationRequest
from kleinserve.settings import Settings
from kleinserve.storage import CONTENT_TYPES, LocalFile, Store, image_key

log = logging.getLogger("kleinserve")

DEMO_MODEL_ID = "flux.2-klein-4b"
DEMO_LABEL = "DEMO: tiny random-weight test model; its images are noise, not FLUX.2 [klein]"
INTERRUPTED = {
    "type": "server_error",
    "message": "the server stopped before this job finished; nothing was produced, submit it again",
    "param": None,
}


class ModelNotServed(KleinserveError):
    """A model name this server does not serve (unknown, or known but not loaded here)."""


class ModelNotReady(KleinserveError):
    """The model is still loading (or failed to load)."""

    retry_after = 5


class GenerationFailed(KleinserveError):
    """The engine raised; the job is recorded as failed."""


@dataclass(frozen=True)
class OutputOptions:
    format: str = "png"  # png | jpeg | webp
    quality: int | None = None  # jpeg/webp quality 0..100; None: 90
    store: bool = True  # False: images only come back inline; nothing is written


@dataclass(frozen=True)
class OutputImage:
    data: bytes
    content_type: str
    width: int
    height: int
    key: str | None  # storage key when stored


@dataclass
class Generated:
    job_id: str
    model: str
    seed: int
    images: list[OutputImage]
    timings: dict[str, float]


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
        self._gpu_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kleinserve-engine")
        self._tasks: list[asyncio.Task] = []

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        interrupted = await self.jobs.fail_unfinished(INTERRUPTED)
        if interrupted:
            log.warning(
                "%d job(s) were unfinished when the server last stopped; marked failed", len(interrupted)
            )
        self._tasks.append(asyncio.create_task(self._load_models(), name="load-models"))
        if self.settings.retention_hours > 0:
            self._tasks.append(asyncio.create_task(self._expire_old_jobs(), name="expire-jobs"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._gpu_thread.shutdown(wait=True, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return all(served.state == "ready" for served in self.models)

    async def _load_models(self) -> None:
        from kleinserve.engine.warmup import load_engine  # torch is imported here, off the event loop

        loop = asyncio.get_running_loop()
        for served in self.models:
            try:
                engine = await loop.run_in_executor(
                    self._gpu_thread, load_engine, served.spec, self.settings, served.demo
                )
            except Exception as exc:
                served.state, served.error = "failed", f"{type(exc).__name__}: {exc}"
                log.error("could not load %s: %s", served.spec.id, served.error)
                continue
            served.batcher = Batcher(
                engine,
                self._gpu_thread,
                _JobEvents(self, served.spec.id),
                max_batch_images=self.settings.max_batch_images,
                max_wait_s=self.settings.batch_wait_ms / 1000,
                max_queue_depth=self.settings.max_queue_depth,
            )
            self._tasks.append(asyncio.create_task(served.batcher.run(), name=f"batcher-{served.spec.id}"))
            served.state = "ready"
            log.info("%s is ready%s", served.spec.id, f" ({DEMO_LABEL})" if served.demo else "")

    async def _expire_old_jobs(self) -> None:
        retention = self.settings.retention_hours * 3600
        while True:
            await self.expire_jobs(time.time() - retention)
            await asyncio.sleep(min(max(retention / 4, 1.0), 600.0))

    async def expire_jobs(self, before: float) -> int:
        jobs = await self.jobs.expired(before)
        for job in jobs:
            await asyncio.to_thread(self.store.delete_job, job.id)
        await self.jobs.delete([job.id for job in jobs])
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
        if served.batcher is None:
            if served.state == "failed":
                raise ModelNotReady(f"{served.spec.id} failed to load: {served.error}")
            raise ModelNotReady(f"{served.spec.id} is still loading; retry shortly")
        return served.batcher

    # --- generation ------------------------------------------------------------------------------

    async def generate(
        self, served: ServedModel, request: GenerationRequest, output: OutputOptions, params: dict
    ) -> Generated:
        """Run one request as a job and return its encoded images (stored unless output.store is False)."""
        batcher = self.ready_batcher(served)
        model = served.spec.id
        job = Job(new_job_id(), model, {**params, **_describe(request), "output_format": output.format})
        future = batcher.submit(job.id, request)  # raises QueueFull before anything is recorded
        queued_at = time.monotonic()
        job.logs.append(
            {"timestamp": time.time(), "level": "INFO", "message": f"queued at position {batcher.depth}"}
        )
        await self.jobs.add(job)
        try:
            result = await future
            waited = time.monotonic() - queued_at - sum(result.timings.values())
            timings = {"queue": max(0.0, waited), **result.timings}
            images = await self._encode_and_store(job.id, result.images, request, output, timings)
        except asyncio.CancelledError:
            batcher.cancel(job.id)
            await asyncio.shield(self._record_end(job.id, model, JobStatus.CANCELLED, error=_cancelled()))
            raise
        except Exception as exc:
            log.exception("generation failed for job %s", job.id)
            error = {"type": "server_error", "message": f"generation failed: {exc}", "param": None}
            await self._record_end(job.id, model, JobStatus.FAILED, error=error)
            raise GenerationFailed(error["message"]) from exc
        self.metrics.observe_images(model, len(images), request.width, request.height)
        self.metrics.observe_stages(
            model, {k: timings[k] for k in ("queue", "encode", "store") if k in timings}
        )
        generated = Generated(job.id, model, result.seed, images, timings)
        await self._record_end(job.id, model, JobStatus.SUCCEEDED, result=_result_record(generated))
        return generated

    async def _encode_and_store(
        self, job_id, arrays, request, output: OutputOptions, timings
    ) -> list[OutputImage]:
        start = time.monotonic()
        encoded = await asyncio.gather(
            *(asyncio.to_thread(encode_image, array, output.format, output.quality) for array in arrays)
        )
        timings["encode"] = time.monotonic() - start
        keys: list[str | None] = [None] * len(encoded)
        if output.store:
            start = time.monotonic()
            keys = [image_key(job_id, i, output.format) for i in range(len(encoded))]
            writes = (asyncio.to_thread(self.store.put, k, d) for k, d in zip(keys, encoded, strict=True))
            await asyncio.gather(*writes)
            timings["store"] = time.monotonic() - start
        content_type = CONTENT_TYPES[output.format]
        return [
            OutputImage(data, content_type, request.width, request.height, key)
            for data, key in zip(encoded, keys, strict=True)
        ]

    async def _record_end(
        self, job_id: str, model: str, status: JobStatus, *, result=None, error=None
    ) -> None:
        await self.jobs.finish(job_id, status, result=result, error=error)
        await self.jobs.log(job_id, status.value if error is None else f"{status.value}: {error['message']}")
        self.metrics.jobs.labels(model, status.value).inc()

    # --- files and jobs --------------------------------------------------------------------------

    def file_url(self, key: str, base_url: str) -> str:
        return self.store.url(key, self.settings.public_base_url or base_url)

    def local_file(self, key: str) -> LocalFile | None:
        return self.store.local_file(key)

    async def job(self, job_id: str) -> Job | None:
        return await self.jobs.get(job_id)


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

    def batch_step(self, works: list[Work], step: int, total: int) -> None:
        for work in works:
            self._spawn(self.service.jobs.log(work.job_id, f"step {step}/{total}"))

    def batch_finished(self, works: list[Work], timings: dict[str, float]) -> None:
        images = sum(w.request.num_images for w in works)
        self.service.metrics.observe_batch(self.model, images, timings)

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


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


def _result_record(generated: Generated) -> dict:
    return {
        "seed": generated.seed,
        "timings": generated.timings,
        "images": [
            {
                "key": i.key,
                "content_type": i.content_type,
                "width": i.width,
                "height": i.height,
                "bytes": len(i.data),
            }
            for i in generated.images
        ],
    }


def _cancelled() -> dict:
    return {"type": "cancelled", "message": "the client went away before the job finished", "param": None}
