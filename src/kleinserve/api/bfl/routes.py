"""Black Forest Labs' API (api.bfl.ai), asynchronous as BFL's is:

    POST /v1/flux-2-klein-{4b,9b,9b-kv,base-4b,base-9b}    {id, polling_url, cost, input_mp, output_mp}
    GET  /v1/get_result?id=    {id, status: Pending | Ready | Error | Content Moderated, result}

where @ai-sdk/black-forest-labs posts with `createBlackForestLabs({ baseURL: "<server>/v1" })`. The key comes
as `x-key` (access.py reads it) or `Authorization: Bearer`. The body is checked by BflRequest (schemas.py)
and becomes a queued job; get_result answers for the caller's own jobs only (another key's is not found).
Errors come in BFL's (FastAPI's) shape: `{"detail": [{loc, msg, type}]}` for a field, else `{"detail"}`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from kleinserve.api import openapi_docs as docs
from kleinserve.api.access import owner_of
from kleinserve.api.bfl.result import task_status
from kleinserve.api.bfl.schemas import (
    EXTRA_IMAGE_FIELDS,
    IMAGE_FIELDS,
    BflError,
    BflRequest,
    BflResult,
    BflSubmitted,
)
from kleinserve.api.dialect_request import to_request, validated
from kleinserve.api.dialect_response import generation_headers
from kleinserve.api.errors import ApiError, from_service_error, invalid
from kleinserve.api.gateway.schemas import ratio_sides
from kleinserve.api.json_body import json_object
from kleinserve.api.request_metrics import report_model
from kleinserve.api.webhook_target import check_webhook_url
from kleinserve.errors import KleinserveError, ModelNotServed
from kleinserve.request import GenerationRequest, OutputOptions
from kleinserve.service.facade import ImageService
from kleinserve.service.served_models import ServedModel

MODELS = ("flux-2-klein-4b", "flux-2-klein-9b", "flux-2-klein-9b-kv", "flux-2-klein-base-4b",
          "flux-2-klein-base-9b")  # fmt: skip
SUBMIT_ANSWERS = docs.answers(BflSubmitted, BflError, 404, 422, *docs.SERVICE)
RESULT_ANSWERS = docs.answers(BflResult, BflError, 404)
# build_request's arguments -> the BFL fields they come from (and errors name)
FIELDS = {"prompt": "prompt", "seed": "seed", "steps": "steps", "guidance": "guidance",
          "width": "width", "height": "height"}  # fmt: skip


def router(service: ImageService) -> APIRouter:
    routes = APIRouter(prefix="/v1")

    @routes.get("/get_result", responses=RESULT_ANSWERS)
    async def get_result(request: Request, id: str = Query(description="the id POST answered")):
        return await _bfl(_result(service, request, id))

    for model in MODELS:  # one route each: other POST /v1/... paths keep their own answers (405, 404)
        routes.add_api_route(
            f"/{model}", _submitter(service, model), methods=["POST"], name=f"bfl_{model}",
            openapi_extra=docs.json_body(BflRequest), responses=SUBMIT_ANSWERS,
        )  # fmt: skip

    return routes


def _submitter(service: ImageService, model: str):
    async def submit(request: Request) -> JSONResponse:
        return await _bfl(_submit(service, request, model))

    return submit


async def _bfl(answer: Awaitable[JSONResponse]) -> JSONResponse:
    """The route's answer, or its error in BFL's shape."""
    try:
        return await answer
    except KleinserveError as exc:
        error = from_service_error(exc)
    except ApiError as exc:
        error = exc
    status, body = error.bfl_body()
    return JSONResponse(body, status_code=status, headers=error.headers())


# --- submit ----------------------------------------------------------------------------------------


async def _submit(service: ImageService, http: Request, model: str) -> JSONResponse:
    served = _served(service, model)
    report_model(http, served.spec.id)
    fields = await json_object(http)
    _refuse_unsupported(fields)
    body = validated(BflRequest, fields)
    if body.webhook_url is not None:
        await check_webhook_url(service, body.webhook_url, "webhook_url")
    images = await _references(service, body)
    generation = _to_request(served, body, images)
    check = service.settings.safety_check_openai  # safety_tolerance is accepted, not graded (README)
    output = OutputOptions(format=body.output_format or "jpeg", safety_check=check)
    params = {"dialect": "bfl", "route": model, "safety_tolerance": body.safety_tolerance,
              "base_url": str(http.base_url), "webhook": body.webhook_url,
              "webhook_secret": body.webhook_secret}  # fmt: skip
    job = await service.submit(
        served, generation, output, params, detached=True, owner=owner_of(http), webhook=body.webhook_url
    )
    polling_url = f"{str(http.base_url).rstrip('/')}/v1/get_result?id={job.id}"
    megapixels = round(generation.width * generation.height / 1e6, 4)
    answer = {"id": job.id, "polling_url": polling_url, "cost": None, "input_mp": None,
              "output_mp": megapixels}  # fmt: skip
    return JSONResponse(answer, headers=generation_headers(served, job.id, "x-request-id"))


def bfl_name(served: ServedModel) -> str:
    """A served model as BFL's path names it: flux.2-klein-9b -> flux-2-klein-9b."""
    return served.spec.id.replace("flux.2-", "flux-2-")


def _served(service: ImageService, model: str) -> ServedModel:
    """The model the path names (flux-2-klein-4b...); a 404 naming it and what is served."""
    names = {bfl_name(served): served for served in service.models}
    try:
        return names[model] if model in names else service.model(model)
    except ModelNotServed:
        endpoints = ", ".join(f"/v1/{name}" for name in names)
        message = f"model '{model}' is not served here; POST to one of {endpoints}"
        raise ApiError(404, message, code="model_not_found") from None


def _refuse_unsupported(fields: dict) -> None:
    """What BFL takes but this route does not: said, never dropped in silence."""
    extra = next((name for name in EXTRA_IMAGE_FIELDS if fields.get(name) is not None), None)
    if extra is not None:
        message = "FLUX.2 [klein] takes at most 4 reference images here (input_image .. input_image_4)"
        raise invalid(extra, f"{message}; send fewer")


async def _references(service: ImageService, body: BflRequest) -> list:
    """input_image .. input_image_4: URLs fetched (through the outbound guard), base64 decoded."""
    given = [(name, getattr(body, name)) for name in IMAGE_FIELDS if getattr(body, name) is not None]
    return list(await asyncio.gather(*(_reference(service, value, name) for name, value in given)))


async def _reference(service: ImageService, value: str, field: str):
    if value.startswith(("http://", "https://", "data:")):
        return await service.fetch_reference(value, field)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(field, "must be an http(s) URL, a data: URL or base64 image bytes") from None
    return await service.decode_reference(data, field, field)


def _to_request(served: ServedModel, body: BflRequest, images: list) -> GenerationRequest:
    spec = served.spec
    if body.guidance is not None and not spec.uses_cfg and body.guidance != spec.default_guidance:
        raise invalid("guidance", f"{spec.id} is step-distilled and takes no guidance; leave it out "
                                  f"(or use a flux-2-klein-base model)")  # fmt: skip
    fields = {name: getattr(body, name) for name in body.model_fields_set if name in FIELDS.values()}
    sides = _ratio(body.aspect_ratio) if body.width is None and body.height is None else {}
    return to_request(spec, fields, FIELDS, images=images, **sides)


def _ratio(aspect_ratio: str | None) -> dict:
    if aspect_ratio is None:
        return {}
    try:
        width, height = ratio_sides(aspect_ratio)
    except ApiError as exc:
        raise invalid("aspect_ratio", exc.reason) from None
    return {"width": width, "height": height}


# --- get_result ------------------------------------------------------------------------------------


async def _result(service: ImageService, http: Request, job_id: str) -> JSONResponse:
    job = await service.owned_job(job_id, owner_of(http))
    if job is None or job.params.get("dialect") != "bfl":
        detail = f"no task {job_id!r} for this key; tasks are kept for the server's retention period"
        body = {"id": job_id, "status": "Task not found", "detail": detail}
        return JSONResponse(body, status_code=404)
    return JSONResponse(await task_status(service, job, str(http.base_url)))
