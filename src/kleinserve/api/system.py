"""Operator endpoints: liveness, readiness, Prometheus metrics, per-model stats, and job records."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from kleinserve.api import openapi_docs as docs
from kleinserve.api.access import owner_of
from kleinserve.api.errors import ApiError, OpenAIError
from kleinserve.errors import ModelNotReady
from kleinserve.job import Job, JobStatus
from kleinserve.metrics import METRICS_CONTENT_TYPE
from kleinserve.service.facade import ImageService
from kleinserve.service.served_models import DEMO_LABEL


def router(service: ImageService) -> APIRouter:
    routes = APIRouter()

    @routes.get("/health", responses=docs.answers(None, OpenAIError))
    async def health() -> dict:
        outage = service.database_outage
        return {"status": "ok" if outage is None else "degraded", "models": _model_states(service),
                **_database(service)}  # fmt: skip

    @routes.get("/ready", responses=docs.answers(None, OpenAIError, 503))
    async def ready() -> JSONResponse:
        body = {"ready": service.ready, "models": _model_states(service), **_database(service)}
        return JSONResponse(body, status_code=200 if service.ready else 503, headers=_retry(service))

    @routes.get("/metrics", responses=docs.answers(None, OpenAIError, media="text/plain"))
    async def metrics() -> Response:
        for model, depth in (await service.queue_depths()).items():  # read from the queue at scrape time
            service.metrics.queue_depth.labels(model).set(depth)
        return Response(service.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @routes.get("/v1/stats", responses=docs.answers(None, OpenAIError))
    async def stats() -> dict:
        return await service.stats_report()

    @routes.get("/v1/jobs", responses=docs.answers(None, OpenAIError))
    async def jobs(request: Request, status: str | None = None, limit: str = "100") -> dict:
        """The caller's jobs (its API key's; all on an open server), newest first, without logs."""
        states = [state.value for state in JobStatus]
        if status is not None and status not in states:
            raise ApiError(400, f"status must be one of {', '.join(states)}, got {status!r}", param="status")
        if not (limit.isascii() and limit.isdigit() and 1 <= int(limit) <= 1000):
            raise ApiError(400, f"limit must be an integer from 1 to 1000, got {limit[:20]!r}", param="limit")
        found = await service.recent_jobs(owner_of(request), status and JobStatus(status), int(limit))
        return {"object": "list", "data": [_public(record) for record in found]}

    @routes.get("/v1/jobs/{job_id}", responses=docs.answers(None, OpenAIError, 404))
    async def job(job_id: str, request: Request) -> dict:
        record = await service.owned_job(job_id, owner_of(request))
        if record is None:
            raise ApiError(
                404,
                f"no job {job_id!r}; finished jobs are kept for {service.settings.retention_hours:g} hours",
                param="job_id",
            )
        return _public(record)

    return routes


def _public(record: Job) -> dict:
    """A job as its owner sees it: everything but the owner's key fingerprint and the queue's internals."""
    hidden = ("owner", "batch_key")
    return {name: value for name, value in dataclasses.asdict(record).items() if name not in hidden}


def _model_states(service: ImageService) -> dict:
    return {
        served.spec.id: {
            "state": served.state,
            **({"error": served.error} if served.error else {}),
            **({"warning": DEMO_LABEL} if served.demo else {}),
            **({"workers": served.workers} if served.workers is not None else {}),  # --role api
        }
        for served in service.models
    }


def _database(service: ImageService) -> dict:
    """The job database's state, where its last call could not reach it (the reason stays in the log)."""
    if service.database_outage is None:
        return {}
    message = "the job database is unreachable; the server log says why"
    return {"database": {"reachable": False, "message": message}}


def _retry(service: ImageService) -> dict[str, str]:
    return {} if service.ready else {"Retry-After": str(ModelNotReady.retry_after)}
