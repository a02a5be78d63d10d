"""Scaled out on Ray Serve: Ray places, restarts and autoscales the processes; the queue stays in PostgreSQL.

Two kinds of application, built from the same Settings as `kleinserve serve`:
- "api": N replicas of the HTTP server with --role api (no models), behind Serve's HTTP proxy.
- "engine-<model id>", one per model: replicas that each run a Worker for that model (1 GPU each by
  default). Nothing is routed to them: they claim batches from the database. Their replica count follows
  the model's queue depth (engine_autoscaling.QueueDepthPolicy).

Ray Serve itself keeps no work: a replica that dies loses only its lease, and its jobs run again elsewhere
when the lease expires (--job-lease-s). `kleinserve ray-deploy` (cli.py) calls deploy(); Ray is imported
only here, from the optional `scale` extra."""

from __future__ import annotations

import asyncio
import logging
import warnings
from dataclasses import dataclass

from ray import serve
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, HTTPOptions

from kleinserve.roles.autoscaling import QUEUED, RUNNING, QueueDepthPolicy
from kleinserve.service.served_models import served_specs
from kleinserve.settings import Settings

log = logging.getLogger("kleinserve")

API_APP = "api"
API_CONCURRENCY = 1000  # requests one API replica holds at once (Serve's default, 5, would block SSE streams)
LOAD_POLL_S = 0.5
STOP_MARGIN_S = 30.0  # beyond --shutdown-grace-s, before Serve kills a stopping replica
REPORT_S = 1.0  # seconds between an engine replica's reports of the queue to Serve (Ray's default: 10)
LOOK_BACK_S = 5.0  # scaling sees the peak of the figures over this window


@dataclass(frozen=True)
class Placement:
    """What Ray Serve is told beyond Settings: replica counts, GPUs per engine replica, scaling delays."""

    api_replicas: int = 1
    min_engine_replicas: int = 1
    max_engine_replicas: int = 1
    jobs_per_engine_replica: int | None = None  # queued + running jobs per replica; None: --max-batch-images
    engine_gpus: float = 1.0
    upscale_delay_s: float = 0.0
    downscale_delay_s: float = 300.0
    proxy_location: str = "HeadOnly"  # or EveryNode: a proxy per machine, all on --host (then 0.0.0.0)


def engine_app_name(model_id: str) -> str:
    return f"engine-{model_id}"


@serve.ingress()
class ApiReplica:
    """The whole HTTP API (`serve --role api`'s app); Serve runs the app's lifespan, which starts the
    service."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def __serve_build_asgi_app__(self):
        from kleinserve.roles.server import build_app

        return build_app(self.settings)


class EngineReplica:
    """One Worker for one model: it claims batches from the job store until Serve stops the replica. The
    replica counts as running (for Serve's status and scaling) once its model is loaded; a model that fails
    to load fails the replica, which Serve then starts again."""

    async def __init__(self, settings: Settings):
        from kleinserve.roles.worker import Worker

        self.grace_s = settings.shutdown_grace_s
        self.worker = Worker(settings)
        await self.worker.start()
        while not self.worker.ready:
            failed = [f"{model}: {report.get('error')}" for model, report in self.worker.models().items()
                      if report["state"] == "failed"]  # fmt: skip
            if failed:
                await self.worker.stop(0)
                raise RuntimeError(f"the model failed to load: {'; '.join(failed)}")
            await asyncio.sleep(LOAD_POLL_S)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The figures QueueDepthPolicy scales on (Serve asks every REPORT_S)."""
        queued = await self.worker.queued_jobs()
        return {QUEUED: float(queued), RUNNING: float(self.worker.running_jobs())}

    async def __del__(self):
        await self.worker.stop(self.grace_s)


def api_application(settings: Settings, placement: Placement):
    deployment = serve.deployment(
        ApiReplica,
        name="Api",
        num_replicas=placement.api_replicas,
        max_ongoing_requests=API_CONCURRENCY,
        graceful_shutdown_timeout_s=settings.shutdown_grace_s + STOP_MARGIN_S,
        ray_actor_options={"num_cpus": 1},
    )
    return deployment.bind(settings.model_copy(update={"role": "api", "models": (), "demo": False}))


def engine_applications(settings: Settings, placement: Placement) -> dict[str, object]:
    """One application per served model (--model entries, and --demo), each with its own Settings."""
    engine = settings.model_copy(update={"worker_metrics_port": None})  # replicas share a machine's ports
    entries = [engine.model_copy(update={"models": (entry,), "demo": False}) for entry in settings.models]
    if settings.demo:
        entries.append(engine.model_copy(update={"models": (), "demo": True}))
    apps = {}
    for one in entries:
        ((spec, _demo),) = served_specs(one)
        apps[engine_app_name(spec.id)] = _engine_deployment(settings, placement).bind(one)
    return apps


def _engine_deployment(settings: Settings, placement: Placement):
    per_replica = placement.jobs_per_engine_replica or settings.max_batch_images
    with warnings.catch_warnings():  # Ray 2.60 deprecates metrics_interval_s, yet replicas push at that pace
        warnings.simplefilter("ignore", DeprecationWarning)
        autoscaling = AutoscalingConfig(
            min_replicas=placement.min_engine_replicas,
            max_replicas=placement.max_engine_replicas,
            upscale_delay_s=placement.upscale_delay_s,
            downscale_delay_s=placement.downscale_delay_s,
            metrics_interval_s=REPORT_S,
            look_back_period_s=LOOK_BACK_S,
            aggregation_function="max",
            policy=AutoscalingPolicy(
                policy_function=QueueDepthPolicy, policy_kwargs={"jobs_per_replica": per_replica}
            ),
        )
    return serve.deployment(
        EngineReplica,
        name="Engine",
        autoscaling_config=autoscaling,
        graceful_shutdown_timeout_s=settings.shutdown_grace_s + STOP_MARGIN_S,
        ray_actor_options={"num_gpus": placement.engine_gpus, "num_cpus": 1},
    )


def deploy(settings: Settings, placement: Placement, address: str) -> list[str]:
    """Connects to the Ray cluster at `address` (its token from RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH), starts
    Serve's HTTP proxy on --host/--port and deploys the API and one engine application per model; returns
    once every application runs (the applications outlive this process). Returns the application names."""
    import ray

    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    http = HTTPOptions(
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
    )
    serve.start(http_options=http, proxy_location=placement.proxy_location)
    serve.run(api_application(settings, placement), name=API_APP, route_prefix="/", blocking=False)
    engines = engine_applications(settings, placement)
    for name, app in engines.items():
        serve.run(app, name=name, route_prefix=None, blocking=False)
    return [API_APP, *engines]
