"""create_app(service): the kleinserve HTTP server around a service: its dialects' routes, the error
handlers and the middleware. The service comes assembled for the process's role (roles/assembly.py;
roles/server.py opens the stores --database-url and --store name and builds both)."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from kleinserve import __version__
from kleinserve.api import (
    bfl,
    console,
    fal,
    files,
    gateway,
    loras,
    openai,
    replicate,
    system,
    usage,
    webhook_secret,
)
from kleinserve.api.access import AccessMiddleware
from kleinserve.api.errors import install_error_handlers
from kleinserve.api.fal.proxy import FalProxyMiddleware
from kleinserve.api.request_ids import RequestIdMiddleware
from kleinserve.api.request_metrics import RequestMetricsMiddleware
from kleinserve.service.facade import ImageService
from kleinserve.service.served_models import DEMO_LABEL
from kleinserve.settings import Settings

log = logging.getLogger("kleinserve")


def create_app(service: ImageService) -> FastAPI:
    settings, metrics, jobs = service.settings, service.metrics, service.jobs

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        _announce(settings, service)
        await service.start()
        yield
        await service.stop()
        await jobs.close()

    app = FastAPI(
        title="kleinserve", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None
    )
    app.state.service = service
    install_error_handlers(app)
    app.include_router(replicate.router(service))  # first: its model pages are under /v1/models/{name:path}
    app.include_router(openai.router(service))
    app.include_router(system.router(service))
    app.include_router(usage.router(service))
    app.include_router(loras.router(service))
    app.include_router(files.router(service))
    app.include_router(fal.router(service))
    app.include_router(gateway.router(service))
    # fal webhooks are sent from the job's record by whichever API server claims it: survives restarts
    service.webhook_queue.add_sender(fal.webhook_sender(service))
    service.webhook_queue.add_sender(bfl.webhook_sender(service))
    app.include_router(webhook_secret.router(service))
    app.include_router(console.router(service))
    app.include_router(bfl.router(service))
    app.add_middleware(AccessMiddleware, settings=settings)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, stats=service.stats)  # sees every answer
    app.add_middleware(FalProxyMiddleware)  # outermost: the others see the route a proxied call maps to
    return app


def _announce(settings: Settings, service: ImageService) -> None:
    for served in service.models:
        log.info("serving %s from %s", served.spec.id, served.spec.source)
        if served.demo:
            log.warning("*" * 78)
            log.warning("%s", DEMO_LABEL)
            log.warning("served as %s so API examples work unchanged; not for real use", served.spec.id)
            log.warning("*" * 78)
    if not settings.public_base_url and not settings.allowed_hosts:
        log.warning(
            "neither --public-base-url nor --allowed-host is set: image URLs copy each request's Host "
            "header, which a client controls"
        )
    if not settings.api_keys and not settings.admin_key:
        log.warning(
            "no API keys configured: the API is OPEN to anyone who can reach %s:%d",
            settings.host,
            settings.port,
        )
    else:
        log.info("API keys required (%d configured)", len(settings.api_keys))
    _announce_webhook_secret(settings)
    log.info(
        "data directory %s; jobs and images kept %s",
        settings.data_dir,
        f"{settings.retention_hours:g} h" if settings.retention_hours else "forever",
    )


def _announce_webhook_secret(settings: Settings) -> None:
    """Each API server made its own secret unless given one: scaled out, they must share one."""
    if settings.database_url and not settings.webhook_secret:
        log.warning(
            "webhooks are signed with the secret in %s/webhook-secret; API servers sharing --database-url "
            "need one --webhook-secret between them, or a receiver sees signatures from several keys",
            settings.data_dir,
        )
