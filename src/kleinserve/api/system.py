"""Operator endpoints: liveness, readiness, Prometheus metrics, per-model stats, and job records."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from kleinserve.api import openapi_docs as docs
from kleinserve.api.access import owner_of
from kleinserve.api.errors import ApiError
from kleinserve.errors import ModelNotReady
from kleinserve.metrics import METRICS_CONTENT_TYPE
from kleinserve.service import DEMO_LABEL, ImageService


def router(service: ImageService) -> APIRouter:
    routes = APIRouter()

    @routes.get("/health", responses=docs.answers(None, docs.OpenAIError))
    async def health() -> dict:
        return {"status": "ok", "models": _model_states(service)}

    @routes.get("/ready", responses=docs.answers(None, docs.OpenAIError, 503))
    async def ready() -> JSONResponse:
        body = {"ready": service.ready, "models": _model_states(service)}
        return JSONResponse(body, status_code=200 if service.ready else 503, headers=_retry(service))

    @routes.get("/metrics", responses=docs.answers(None, docs.OpenAIError, media="text/plain"))
    async def metrics() -> Response:
        for model, depth in (await service.queue_depths()).items():  # read from the queue at scrape time
            service.metrics.queue_depth.labels(model).set(depth)
        return Response(service.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @routes.get("/v1/stats", responses=docs.answers(None, docs.OpenAIError))
    async def stats() -> dict:
        return service.metrics.stats()

    @routes.get("/v1/jobs/{job_id}", responses=docs.answers(None, docs.OpenAIError, 404))
    async def job(job_id: str, request: Request) -> dict:
        record = await service.owned_job(job_id, owner_of(request))
        if record is None:
            raise ApiError(
                404,
                f"no job {job_id!r}; finished jobs are kept for {service.settings.retention_hours:g} hours",
                param="job_id",
            )
        return {name: value for name, value in dataclasses.asdict(record).items() if name != "owner"}

    return routes


def _model_states(service: ImageService) -> dict:
    return {
        served.spec.id: {
            "state": served.state,
            **({"error": served.error} if served.error else {}),
            **({"warning": DEMO_LABEL} if served.demo else {}),
        }
        for served in service.models
    }


def _retry(service: ImageService) -> dict[str, str]:
    return {} if service.ready else {"Retry-After": str(ModelNotReady.retry_after)}
