"""The image service: what every API dialect calls (submit, generate, outcome, cancel, jobs, files, reference
images, webhooks). Dialects never reach the job store, the models or storage directly.

A generation: record the job with its inputs (the job store is the queue) -> the models run it, in this
process or in a worker (hosting.py) -> its images are screened, encoded and stored, its end recorded ->
whoever waits here gets its `Outcome` (waiters.py). A job's record is its truth: after a crash, detached
(queue) jobs run again from their stored inputs, and jobs whose caller is gone fail.

The service is given its parts (roles/assembly.py puts them together for each kind of process); it builds
none of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence

from kleinserve.batch_policy import batch_key
from kleinserve.errors import InvalidLora, InvalidRequest, QueueFull, ShuttingDown, StorageFull, is_disk_full
from kleinserve.job import Job, JobStatus, Progress, new_job_id
from kleinserve.jobs.contract import JobStore
from kleinserve.jobs.inputs import pack_inputs
from kleinserve.metrics import Metrics
from kleinserve.pricing import Prices
from kleinserve.request import GenerationRequest, OutputOptions
from kleinserve.service.background import Background
from kleinserve.service.completion import JobCompletion
from kleinserve.service.hosting import Hosting
from kleinserve.service.lora_sources import LoraSources
from kleinserve.service.outcome import CANCELLED, DISK_FULL, SHUTTING_DOWN, JobError, Outcome
from kleinserve.service.outputs import Generated, Outputs
from kleinserve.service.references import References
from kleinserve.service.served_models import ServedModel
from kleinserve.service.stats import RequestStats
from kleinserve.service.uploads import UploadedFiles
from kleinserve.service.waiters import StepListener, Waiters
from kleinserve.service.webhook_queue import WebhookQueue
from kleinserve.service.webhooks import Delivery, WebhookSender
from kleinserve.settings import Settings
from kleinserve.storage.store import LocalFile, Store

log = logging.getLogger("kleinserve")

SHUTDOWN = "the server is shutting down"


class ImageService:
    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        store: Store,
        metrics: Metrics,
        *,
        hosting: Hosting,
        completion: JobCompletion,
        outputs: Outputs,
        references: References,
        webhooks: WebhookSender,
        webhook_queue: WebhookQueue,
        stats: RequestStats,
        prices: Prices,
        loras: LoraSources,
        startup: Sequence[Callable[[], Awaitable[None]]] = (),
        loops: dict[str, Callable[[], Coroutine]] | None = None,
    ):
        """`startup`: steps run first at start (e.g. recovering what the last run left); `loops`: named
        background loops run from start to stop (requeueing expired leases, webhooks, retention, ...)."""
        self.settings = settings
        self.jobs = jobs
        self.store = store
        self.metrics = metrics
        self.hosting = hosting
        self.completion = completion
        self.waiters: Waiters = completion.waiters
        self.background: Background = completion.background
        self.outputs = outputs
        self.references = references
        self.webhooks = webhooks
        self.webhook_queue = webhook_queue
        self.stats = stats
        self.prices = prices
        self.loras = loras
        self.uploads = UploadedFiles(jobs, store, settings, references)  # Replicate's /v1/files
        self._startup = list(startup)
        self._loops = dict(loops or {})
        self.shutting_down = False

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        for step in self._startup:
            await step()
        await self.hosting.start()
        for name, loop in self._loops.items():
            self.background.loop(loop(), name=name)

    async def stop(self) -> None:
        await self.webhook_queue.stop()  # a delivery cut short is sent again once its lease runs out
        await self.background.stop()
        self.hosting.close()
        await self.references.close()

    def begin_shutdown(self, grace_s: float) -> None:
        """From now on no new work. Queued jobs a caller here waits for fail now; detached (queue) jobs stay
        queued for the next start. Running batches get `grace_s` to finish, then stop: their detached
        jobs go back to the queue, the others fail."""
        if self.shutting_down:
            return
        self.shutting_down = True
        log.warning("shutting down: waiting callers' queued jobs fail now, running batches get %g s", grace_s)
        self.hosting.begin_shutdown(grace_s)
        error = JobError(SHUTTING_DOWN, f"{SHUTDOWN}: this job had not started")
        for job_id, waiter in self.waiters.callers():
            self.background.spawn(self.completion.fail_queued(job_id, waiter.model, error))

    async def settled(self, timeout: float) -> None:
        """After begin_shutdown: until the batchers stopped and their last results are recorded (or
        `timeout`)."""
        await self.background.drained(timeout, first=self.hosting.stopped())

    @property
    def ready(self) -> bool:
        return not self.shutting_down and self.hosting.ready and self.jobs.outage is None

    @property
    def database_outage(self) -> str | None:
        """Why the job database could not be reached at the last try (None: it could)."""
        return self.jobs.outage

    # --- models ----------------------------------------------------------------------------------

    @property
    def models(self) -> list[ServedModel]:
        return self.hosting.models

    def model(self, name: str | None) -> ServedModel:
        """The served model a request names (id or alias, any case); None means the default (first)."""
        return self.hosting.model(name)

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
        follow_webhook: bool = False,
    ) -> Job:
        """Record a job with its inputs: from then on it is queued, and runs even if this process dies
        (when `detached`: a queue submission nobody here waits on). `on_step` hears each denoising step,
        with previews. `webhook`: where the dialect's webhook sender reports the job's end; with
        `follow_webhook` the caller holds that delivery from the start (webhook_queue.py: it sends events
        while the job runs, then the end)."""
        if self.shutting_down:
            raise ShuttingDown(f"{SHUTDOWN}; retry in a moment (another replica, or this one restarted)")
        served.require_ready()
        await self.check_loras(served, request)
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
            webhook_held_s=self.webhook_queue.lease_s if webhook and follow_webhook else 0.0,
        )
        inputs = await asyncio.to_thread(pack_inputs, request, output)
        depth = await self.jobs.queue_depth(served.spec.id)
        job.logs.append(
            {"timestamp": time.time(), "level": "INFO", "message": f"queued behind {depth} job(s)"}
        )
        self.hosting.waiter(job, on_step)
        try:
            added = await self._record(self.jobs.add(job, inputs, max_queued=self.settings.max_queue_depth))
        except BaseException:
            self.waiters.drop(job.id)
            raise
        if not added:
            self.waiters.drop(job.id)
            raise QueueFull(served.spec.id, depth, self.hosting.retry_after(served, depth))
        self.hosting.queued(job)
        return job

    async def check_loras(self, served: ServedModel, request: GenerationRequest) -> None:
        """Each LoRA fetched (into the disk cache) and, where the model runs here, parsed and checked against
        it (into its memory cache); InvalidRequest naming loras[i].path otherwise."""
        engine = getattr(served.batcher, "engine", None)
        for index, choice in enumerate(request.loras):
            field = f"loras[{index}].path"
            path = await self.loras.resolve(choice.path, field)
            try:
                await asyncio.to_thread(_check_lora_file, engine, path)
            except InvalidLora as exc:
                raise InvalidRequest(field, str(exc)) from None

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
        ended = self.waiters.get(job.id).ended  # taken now: the waiter leaves as soon as the job ends

        async def wait() -> Generated:
            try:
                return await asyncio.shield(ended)
            except asyncio.CancelledError:
                self.background.spawn(self._cancel(job.id, "the client went away before the job finished"))
                raise

        return wait()

    async def cancel(self, job_id: str) -> str | None:
        """ "requested" (the job ends as cancelled), "finished" (too late), or None for an unknown job."""
        return await self._cancel(job_id, "cancelled at the client's request")

    async def _cancel(self, job_id: str, reason: str) -> str | None:
        error = JobError(CANCELLED, reason)
        outcome = await self.jobs.cancel(job_id, error.record())
        if outcome != "cancelled":
            return outcome
        job = await self.jobs.get(job_id)
        self.completion.count_end(job.model, JobStatus.CANCELLED)
        self.hosting.stop_job(job.model, job_id)  # its batch stops at the next step once none of it is wanted
        self.completion.settle(job_id, Outcome(error=error))
        return "requested"

    async def queue_position(self, job: Job) -> int | None:
        """0-based place among its model's queued jobs; None once it has left the queue."""
        return await self.jobs.queue_position(job.id)

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
        return await self.references.decode(data, name, field)

    async def fetch_reference(self, url: object, field: str):
        """A reference image from an http(s) URL or a data URI, decoded and reduced; InvalidRequest naming
        `field` when it cannot be had."""
        return await self.references.fetch(url, field)

    async def check_webhook_address(self, host: str, port: int | None, field: str) -> None:
        """InvalidRequest naming `field` unless the host is one this server may call."""
        await self.references.outbound.checked_address(host, port, field)

    @property
    def webhook_secret(self) -> str:
        """The Standard Webhooks secret (whsec_...) every webhook is signed with."""
        return self.webhooks.secret

    async def deliver_webhook(
        self, job_id: str, url: str, body: dict, delivery: Delivery | None = None
    ) -> bool:
        """POST `body` to `url` with retries, logging each attempt on the job."""
        return await self.webhooks.deliver(job_id, url, body, delivery)

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

    async def until_ended(self, job_id: str, timeout: float) -> Job | None:
        """The job's record once it has ended, or as it stands after `timeout` seconds (None: unknown). The
        job goes on either way: a caller that stops waiting does not cancel it."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.jobs.get(job_id)
            left = deadline - time.monotonic()
            if job is None or job.status.finished or left <= 0:
                return job
            await self.jobs.wait_changed(job_id, min(left, 1.0))

    async def progress(self, job_id: str) -> Progress | None:
        """A running job's latest denoising step (None before the first, or once it is gone)."""
        return await self.jobs.progress(job_id)

    async def recent_jobs(self, owner: str | None, status: JobStatus | None, limit: int) -> list[Job]:
        return await self.jobs.recent(owner, status, limit)

    async def usage(self, owner: str | None, **filters) -> list[dict]:
        """The usage ledger's sums per UTC day, owner and model (JobStore.usage_by_day's filters)."""
        return await self.jobs.usage_by_day(owner, **filters)

    async def result(self, job: Job) -> Generated:
        """The images of a succeeded job (raises ResultGone for inline images no longer kept)."""
        return await self.outputs.rebuild(job)


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
        **({"loras": [{"path": c.path, "scale": c.scale} for c in request.loras]} if request.loras else {}),
    }


def _check_lora_file(engine, path) -> None:
    """With the model here: parsed and fitted to it. Without (an API server): at least safetensors."""
    if engine is not None:
        engine.load_lora_file(path)
        return
    from kleinserve.engine.lora_file import read_lora_file  # torch, off the import path of API servers

    read_lora_file(path)
