"""Replicate's HTTP API (api.replicate.com/v1) for the klein models, as replicate-python
(`Client(base_url=...)`), the replicate npm client (`new Replicate({ baseUrl })`) and @ai-sdk/replicate
call it:

    POST /v1/models/{owner}/{name}/predictions     create (a prediction object; Prefer: wait blocks)
    POST /v1/predictions                           create by `version` (owner/name:id or an id)
    GET  /v1/predictions[?cursor=]                 the caller's predictions, newest first (a page)
    GET  /v1/predictions/{id}                      one prediction
    POST /v1/predictions/{id}/cancel
    GET  /v1/streams/{id}                          server-sent events: logs, output, done (stream.py)
    POST /v1/files, GET/DELETE /v1/files/{id}, ...  uploaded reference images (files.py)
    GET  /v1/models/black-forest-labs/{name}[/versions/{id}]   the model and its one version

`Prefer: wait` / `wait=N` blocks up to N seconds (60); a prediction still running then is answered as
"starting", which both clients' run() take as "poll on" (any other status is final to them).
`Cancel-After: 30s` (or 5m, 1h30m) cancels a prediction still unfinished by then. Another API key's
predictions are not found. Errors are problem+json (errors.py, ApiError.replicate_body).
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from kleinserve.api import openapi_docs as docs
from kleinserve.api.access import owner_of
from kleinserve.api.dialect_request import validated
from kleinserve.api.dialect_response import generation_headers
from kleinserve.api.errors import ApiError
from kleinserve.api.json_body import json_object
from kleinserve.api.replicate import files, stream, webhook
from kleinserve.api.replicate.catalog import (
    MODELS,
    OWNER,
    VERSION_CREATED,
    by_version,
    served_model,
    takes_lora,
    version_id,
)
from kleinserve.api.replicate.prediction import prediction
from kleinserve.api.replicate.schemas import (
    Prediction,
    PredictionBody,
    PredictionPage,
    ReplicateError,
    ReplicateModel,
    input_schema,
)
from kleinserve.api.replicate.submit import create, prefer_wait
from kleinserve.api.request_metrics import report_model
from kleinserve.job import Job
from kleinserve.service.facade import ImageService
from kleinserve.service.served_models import ServedModel

CREATED = {201: {"model": Prediction, "description": "Created"}}
CREATE_ANSWERS = {**CREATED, **docs.answers(None, ReplicateError, 404, 422, *docs.SERVICE)}
PAGE_SIZE = 100
LISTED = 1000  # the newest predictions a listing pages through
DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|ms|m|s))+$")
UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def router(service: ImageService) -> APIRouter:
    routes = APIRouter(prefix="/v1")
    service.webhook_queue.add_sender(
        webhook.sender(service)
    )  # sent from the job's record, after restarts too

    @routes.post("/models/{owner}/{name}/predictions", openapi_extra=docs.json_body(PredictionBody),
                 responses=CREATE_ANSWERS, status_code=201)  # fmt: skip
    async def create_for_model(owner: str, name: str, request: Request) -> JSONResponse:
        served = served_model(service, owner, name)
        return await _create(service, request, served, f"{owner}/{name}")

    @routes.post(
        "/predictions",
        openapi_extra=docs.json_body(PredictionBody),
        responses=CREATE_ANSWERS,
        status_code=201,
    )
    async def create_by_version(request: Request) -> JSONResponse:
        fields = await json_object(request)
        version = fields.get("version")
        if not isinstance(version, str) or not version:
            raise ApiError(400, "version: is required here (owner/name:id or an id); or POST to "
                                "/v1/models/{owner}/{name}/predictions", param="version",
                           reason="is required (owner/name:id or an id)")  # fmt: skip
        served, model = by_version(service, version)
        return await _create(service, request, served, model, fields)

    @routes.get("/predictions", responses=docs.answers(PredictionPage, ReplicateError))
    async def listing(request: Request, cursor: str | None = Query(None, description="next or previous")):
        return await _page(service, request, cursor)

    @routes.get("/predictions/{prediction_id}", responses=docs.answers(Prediction, ReplicateError, 404))
    async def get(prediction_id: str, request: Request) -> dict:
        return await prediction(service, await _own(service, request, prediction_id))

    @routes.post(
        "/predictions/{prediction_id}/cancel", responses=docs.answers(Prediction, ReplicateError, 404)
    )
    async def cancel(prediction_id: str, request: Request) -> dict:
        job = await _own(service, request, prediction_id)
        await service.cancel(job.id)
        return await prediction(service, await service.job(job.id) or job)

    routes.include_router(stream.router(service))
    routes.include_router(files.router(service))
    for name in MODELS:  # literal paths: GET /v1/models/{name:path} stays OpenAI's for every other name
        page = f"/models/{OWNER}/{name}"
        model_answers = docs.answers(ReplicateModel, ReplicateError, 404)
        routes.add_api_route(page, _model_page(service, name), methods=["GET"], responses=model_answers)
        version_answers = docs.answers(None, ReplicateError, 404)
        version_page = _version_page(service, name)
        routes.add_api_route(f"{page}/versions/{{version}}", version_page, responses=version_answers)
    return routes


async def _create(
    service: ImageService, http: Request, served: ServedModel, model: str, fields=None
) -> JSONResponse:
    report_model(http, served.spec.id)
    wait = prefer_wait(http)
    cancel_after = _cancel_after(http)
    body = validated(PredictionBody, fields if fields is not None else await json_object(http))
    job = await create(service, http, served, model, body)
    if cancel_after is not None:
        service.background.spawn(_cancel_later(service, job.id, cancel_after))
    blocked_out = False
    if wait is not None:
        job = await service.until_ended(job.id, wait) or job
        blocked_out = not job.status.finished
    answer = await prediction(service, job, blocked_out=blocked_out)
    headers = generation_headers(served, job.id, "x-request-id")
    return JSONResponse(answer, status_code=201, headers=headers)


def _cancel_after(http: Request) -> float | None:
    header = http.headers.get("cancel-after")
    if header is None:
        return None
    value = header.strip()
    if not DURATION.match(value):
        raise ApiError(400, f"Cancel-After: {value[:40]!r} must be a duration like 30s, 5m or 1h30m")
    return sum(
        float(amount) * UNITS[unit] for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", value)
    )


async def _cancel_later(service: ImageService, job_id: str, seconds: float) -> None:
    job = await service.until_ended(job_id, seconds)
    if job is not None and not job.status.finished:
        await service.cancel(job_id)


async def _own(service: ImageService, http: Request, prediction_id: str) -> Job:
    job = await service.owned_job(prediction_id, owner_of(http))
    if job is None or job.params.get("dialect") != "replicate":
        message = f"prediction {prediction_id!r} not found for this API token; predictions are kept for the "
        raise ApiError(404, message + "server's retention period", code="prediction_not_found")
    return job


async def _page(service: ImageService, http: Request, cursor: str | None) -> dict:
    """Newest first, PAGE_SIZE a page; the cursor is the place of the page's first prediction."""
    start = int(cursor) if cursor and cursor.isdigit() else 0
    jobs = [job for job in await service.recent_jobs(owner_of(http), None, LISTED)
            if job.params.get("dialect") == "replicate"]  # fmt: skip
    base = f"{str(http.base_url).rstrip('/')}/v1/predictions"
    page = jobs[start : start + PAGE_SIZE]
    following = f"{base}?cursor={start + PAGE_SIZE}" if start + PAGE_SIZE < len(jobs) else None
    preceding = f"{base}?cursor={max(0, start - PAGE_SIZE)}" if start > 0 else None
    results = [await prediction(service, job) for job in page]
    return {"next": following, "previous": preceding, "results": results}


def _model_page(service: ImageService, name: str):
    async def model(request: Request) -> dict:
        served = served_model(service, OWNER, name)
        base = str(request.base_url).rstrip("/")
        about = f"FLUX.2 [klein] served by kleinserve as {served.spec.id}"
        return {"url": f"{base}/v1/models/{OWNER}/{name}", "owner": OWNER, "name": name, "description": about,
                "visibility": "public", "github_url": None, "paper_url": None, "license_url": None,
                "run_count": 0, "cover_image_url": None, "default_example": None,
                "latest_version": _version(served, name)}  # fmt: skip

    return model


def _version_page(service: ImageService, name: str):
    async def version(version: str) -> dict:
        served = served_model(service, OWNER, name)
        if version != version_id(name):
            raise ApiError(404, f"version {version!r} of {OWNER}/{name} not found; its one version is "
                                f"{version_id(name)}", code="version_not_found")  # fmt: skip
        return _version(served, name)

    return version


def _version(served: ServedModel, name: str) -> dict:
    schema = input_schema(served.spec.uses_cfg, takes_lora(name))
    components = {"Input": schema.model_json_schema(),
                  "Output": {"type": "array", "items": {"type": "string", "format": "uri"}}}  # fmt: skip
    return {"id": version_id(name), "created_at": VERSION_CREATED, "cog_version": "0.16.0",
            "openapi_schema": {"openapi": "3.0.2", "components": {"schemas": components}}}  # fmt: skip
