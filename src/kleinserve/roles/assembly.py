"""Each kind of process, put together from the service's parts, in one place. What differs between them is
which parts they get, not a switch inside the service:

- `embedded_service` (`serve`, --role all, the default): HTTP and the models in one process (LocalModels),
  alone with its files: it recovers what the last run left.
- `api_service` (`serve --role api`): HTTP only; the models run in workers (WorkerModels), followed through
  the shared job store.
- `worker_parts` (`kleinserve worker`, and Ray Serve's engine replicas through it): the models only, no
  HTTP, no webhooks; each step is recorded in the store for the API server that follows the job.

Ray Serve's API replicas are `serve --role api` processes (roles/ray_serve.py). Every process requeues the
expired leases of the store it shares and forgets old request samples.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial

from kleinserve.jobs.contract import JobStore
from kleinserve.jobs.opening import open_job_store
from kleinserve.metrics import Metrics
from kleinserve.pricing import Prices
from kleinserve.service.background import Background
from kleinserve.service.completion import JobCompletion
from kleinserve.service.facade import ImageService
from kleinserve.service.hosting import Hosting
from kleinserve.service.housekeeping import Housekeeping
from kleinserve.service.local_models import LocalModels
from kleinserve.service.lora_sources import lora_sources
from kleinserve.service.outbound import Outbound
from kleinserve.service.outputs import Outputs
from kleinserve.service.references import References, decoder_threads
from kleinserve.service.safety import SafetyScreen
from kleinserve.service.stats import RequestStats
from kleinserve.service.waiters import Waiters
from kleinserve.service.watch import ProgressRecorder
from kleinserve.service.webhook_queue import WebhookQueue
from kleinserve.service.webhooks import WebhookSender
from kleinserve.service.worker_models import WorkerModels
from kleinserve.settings import Settings
from kleinserve.storage.opening import open_store
from kleinserve.storage.store import Store
from kleinserve.webhook_signing import stored_secret

Loops = dict[str, Callable[[], Coroutine]]


def open_stores(
    settings: Settings, jobs: JobStore | None = None, store: Store | None = None
) -> tuple[JobStore, Store]:
    """The stores not given: the job store --database-url names (SQLite under the data directory by
    default) and the image store --store names (local files by default, or an S3 bucket checked reachable
    now)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if jobs is None:
        jobs = open_job_store(settings)
    if store is None:
        where = (settings.store, settings.files_dir, settings.presign_expiry_s, settings.store_public_url)
        store = open_store(*where)
    return jobs, store


def serve_service(settings: Settings, jobs: JobStore, store: Store, metrics: Metrics) -> ImageService:
    """The service behind `serve`, as its --role says."""
    build = api_service if settings.role == "api" else embedded_service
    return build(settings, jobs, store, metrics)


def embedded_service(settings: Settings, jobs: JobStore, store: Store, metrics: Metrics) -> ImageService:
    core = _Core.build(settings, jobs, store, metrics, SafetyScreen())
    models = LocalModels(settings, jobs, core.completion, core.completion.screen)
    housekeeping = core.housekeeping(models)
    recover = partial(housekeeping.recover, store_shared=bool(settings.database_url))
    return _http_service(core, models, housekeeping, startup=[recover])


def api_service(settings: Settings, jobs: JobStore, store: Store, metrics: Metrics) -> ImageService:
    core = _Core.build(settings, jobs, store, metrics)
    heartbeats = {"heartbeat_s": settings.worker_heartbeat_s, "ttl_s": settings.worker_ttl_s}
    models = WorkerModels(
        jobs, core.outputs, core.waiters, core.background, core.completion.settle, **heartbeats
    )
    return _http_service(core, models, core.housekeeping(models), startup=[])


@dataclass
class WorkerParts:
    """A worker's models and the loops it runs beside them (roles/worker.py starts and stops them)."""

    models: LocalModels
    background: Background
    jobs: JobStore
    loops: Loops = field(default_factory=dict)


def worker_parts(
    settings: Settings, jobs: JobStore, store: Store, metrics: Metrics, worker_id: str
) -> WorkerParts:
    core = _Core.build(settings, jobs, store, metrics, SafetyScreen())
    progress = ProgressRecorder(jobs)  # API servers follow these jobs in the store
    models = LocalModels(
        settings, jobs, core.completion, core.completion.screen, progress=progress, worker_id=worker_id
    )
    return WorkerParts(models, core.background, jobs, core.loops(core.housekeeping(models)))


@dataclass
class _Core:
    """The parts every process has: the job's end (completion, waiters, outputs) and its figures."""

    settings: Settings
    jobs: JobStore
    store: Store
    metrics: Metrics
    background: Background
    stats: RequestStats
    waiters: Waiters
    outputs: Outputs
    prices: Prices
    completion: JobCompletion

    @classmethod
    def build(cls, settings, jobs, store, metrics, screen: SafetyScreen | None = None) -> _Core:
        background = Background()
        stats = RequestStats(jobs, metrics, settings.stats_window_seconds)
        waiters = Waiters(stats)
        outputs = Outputs(store, jobs, settings.inline_result_ttl_s)
        prices = Prices(settings.prices)
        completion = JobCompletion(
            jobs, outputs, metrics, prices, waiters, background, screen, lease_s=settings.job_lease_s
        )
        return cls(settings, jobs, store, metrics, background, stats, waiters, outputs, prices, completion)

    def housekeeping(self, models: Hosting) -> Housekeeping:
        settings = self.settings
        return Housekeeping(
            self.jobs, self.store, lease_s=settings.job_lease_s, max_attempts=settings.max_attempts,
            settle=self.completion.settle, wake=models.wake,
        )  # fmt: skip

    def loops(self, housekeeping: Housekeeping, *http: tuple[str, Callable[[], Coroutine]]) -> Loops:
        return {
            "requeue-expired": housekeeping.requeue_expired_leases,
            **dict(http),
            "forget-samples": self.stats.forget_old_samples,
        }


def _http_service(core: _Core, models: Hosting, housekeeping: Housekeeping, startup: list) -> ImageService:
    """An HTTP server's service: reference images, webhooks and retention beside the models."""
    settings, jobs = core.settings, core.jobs
    outbound = Outbound(
        settings.allowed_private_networks,
        max_bytes=settings.max_image_bytes,
        timeout_s=settings.image_fetch_timeout_s,
        decoder=(decoder := decoder_threads()),
    )
    secret = settings.webhook_secret or stored_secret(settings.data_dir)
    webhooks = WebhookSender(
        outbound, jobs.log, secret=secret, attempts=settings.webhook_attempts,
        retry_base_s=settings.webhook_retry_base_s, timeout_s=settings.webhook_timeout_s,
    )  # fmt: skip
    webhook_queue = WebhookQueue(
        jobs, attempts=settings.webhook_attempts, timeout_s=settings.webhook_timeout_s,
        retry_base_s=settings.webhook_retry_base_s,
    )  # fmt: skip
    core.completion.end_listeners.append(lambda _job_id: webhook_queue.wake())
    http_loops = [("webhooks", webhook_queue.run)]
    if settings.retention_hours > 0:
        http_loops.append(
            ("expire-jobs", partial(housekeeping.expire_old_jobs, settings.retention_hours * 3600))
        )
    return ImageService(
        settings, jobs, core.store, core.metrics,
        hosting=models, completion=core.completion, outputs=core.outputs,
        references=References(outbound, decoder), webhooks=webhooks, webhook_queue=webhook_queue,
        stats=core.stats, prices=core.prices, loras=lora_sources(settings), startup=startup,
        loops=core.loops(housekeeping, *http_loops),
    )  # fmt: skip
