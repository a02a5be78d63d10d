"""The OpenAI Images dialect's routes: POST /v1/images/generations (JSON), POST /v1/images/edits
(multipart, or JSON with image URLs), GET /v1/models[/{id}]. A body checked by its schema (schemas.py)
becomes a GenerationRequest; the result goes back in OpenAI's response shape, or with `stream: true` as
OpenAI's server-sent events (stream.py)."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from kleinserve.api import openapi_docs as docs
from kleinserve.api import request_ids
from kleinserve.api.access import owner_of
from kleinserve.api.client_gone import unless_client_leaves
from kleinserve.api.dialect_request import COMMON_FIELDS, sent, to_request, validated
from kleinserve.api.dialect_response import (
    demo_warning,
    generation_headers,
    image_base64,
    image_url,
    rounded_timings,
)
from kleinserve.api.errors import ApiError, OpenAIError, invalid
from kleinserve.api.json_body import json_object
from kleinserve.api.openai import json_edit, multipart
from kleinserve.api.openai import stream as event_stream
from kleinserve.api.openai.schemas import (
    EditForm,
    EditJson,
    ImagesRequest,
    ImagesResponse,
    check_names,
    size_sides,
)
from kleinserve.api.request_metrics import report_images, report_model
from kleinserve.api.step_stream import HEADERS as STREAM_HEADERS
from kleinserve.errors import InvalidRequest
from kleinserve.request import GenerationRequest, OutputOptions, check_loras
from kleinserve.service.facade import ImageService
from kleinserve.service.outputs import Generated
from kleinserve.service.served_models import ServedModel

# build_request's arguments -> the OpenAI parameters they come from (and errors name)
PARAMS = {**COMMON_FIELDS, "num_images": "n", "width": "size", "height": "size", "images": "image",
          "loras": "loras"}  # fmt: skip
REQUEST_ID_HEADER = request_ids.HEADER.decode()
CREATED = 1768348800  # 2026-01-14, FLUX.2 [klein]'s release, for /v1/models
ANSWERS = docs.answers(ImagesResponse, OpenAIError, 404, 415, *docs.SERVICE)
ANSWERS[200] = {**ANSWERS[200], "content": {"text/event-stream": {}}}  # with stream: true
EDIT_BODY = {"requestBody": {"required": True, "content": {
    **docs.multipart_body(EditForm)["requestBody"]["content"],
    **docs.json_body(EditJson)["requestBody"]["content"],
}}}  # fmt: skip
Body = ImagesRequest | EditForm | EditJson


def router(service: ImageService) -> APIRouter:
    routes = APIRouter(prefix="/v1")

    @routes.post("/images/generations", openapi_extra=docs.json_body(ImagesRequest), responses=ANSWERS)
    async def generations(request: Request) -> Response:
        body = validated(ImagesRequest, await _json_body(request), served=_lookup(service, request))
        served = service.model(body.model)
        return await _answer(service, request, served, body, images=[], route="generations")

    @routes.post("/images/edits", openapi_extra=EDIT_BODY, responses=ANSWERS)
    async def edits(request: Request) -> Response:
        if json_edit.is_json(request):
            served, body, images = await json_edit.read_edit(service, request, _lookup(service, request))
            return await _answer(service, request, served, body, images=images, route="edits")
        fields, uploads = await multipart.read_form(request)
        # the names and the model first, before any image is decoded; then the rest of the form
        served = _lookup(service, request)(check_names(fields, EditForm.model_fields).get("model"))
        images = await multipart.decode_uploads(service, uploads, served.spec.max_reference_images)
        body = validated(EditForm, fields, served=_lookup(service, request))
        return await _answer(service, request, served, body, images=images, route="edits")

    @routes.get("/models", responses=docs.answers(None, OpenAIError))
    async def models() -> dict:
        return {"object": "list", "data": [_model_entry(m) for m in service.models]}

    @routes.get("/models/{name:path}", responses=docs.answers(None, OpenAIError, 404))
    async def model(name: str) -> dict:
        return _model_entry(service.model(name))

    return routes


def _lookup(service: ImageService, http: Request):
    """The `model` field's check: the served model it names (a 404 if none), reported for per-model stats."""

    def served(name: str | None) -> ServedModel:
        found = service.model(name)
        report_model(http, found.spec.id)
        return found

    return served


async def _answer(
    service: ImageService, http: Request, served: ServedModel, body: Body, *, images: list, route: str
) -> Response:
    if body.stream:
        return await _stream(service, http, served, body, images=images, route=route)
    return await _generate(service, http, served, body, images=images, route=route)


def _params(body: Body, route: str) -> dict:
    return {"dialect": "openai", "route": route, "response_format": body.response_format or "url+b64_json"}


async def _generate(
    service: ImageService, http: Request, served: ServedModel, body: Body, *, images: list, route: str
) -> JSONResponse:
    options = _output_options(body, service.settings.safety_check_openai)
    request = _to_request(served, body, images)
    params = _params(body, route)
    generated = await unless_client_leaves(
        http, service.generate(served, request, options, params, owner=owner_of(http))
    )
    report_images(http, len(generated.images))
    answer = await _response_body(service, http, generated, options, body.response_format, body.prompt)
    headers = generation_headers(served, generated.job_id, REQUEST_ID_HEADER)
    # quality is accepted for compatibility and echoed: FLUX.2 [klein] has one (steps set the effort)
    return JSONResponse({**answer, "quality": body.quality, "model": served.spec.id}, headers=headers)


async def _stream(
    service: ImageService, http: Request, served: ServedModel, body: Body, *, images: list, route: str
) -> StreamingResponse:
    """The job runs as for a plain request; its step previews and outcome become OpenAI's events. With the
    safety checker on, no partial images: a preview is not screened."""
    options = _output_options(body, service.settings.safety_check_openai)
    request = _to_request(served, body, images)
    partials = 0 if options.safety_check else body.partial_images or 0
    steps: asyncio.Queue = asyncio.Queue()
    listener = (lambda *step: steps.put_nowait(step)) if partials else None
    job = await service.submit(
        served, request, options, {**_params(body, route), "stream": True}, on_step=listener,
        owner=owner_of(http),
    )  # fmt: skip
    outcome = asyncio.ensure_future(service.outcome(job))
    outcome.add_done_callback(partial(_count_delivered, http))
    kind = "image_generation" if route == "generations" else "image_edit"
    shape = event_stream.Shape(
        kind, body.quality, options.format, options.quality, request.width, request.height
    )
    headers = {**generation_headers(served, job.id, REQUEST_ID_HEADER), **STREAM_HEADERS}
    events = event_stream.events(shape, partials, steps, outcome)
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def _count_delivered(http: Request, outcome: asyncio.Future) -> None:
    """A streamed generation's images, once they are out (per-model images/s)."""
    if not outcome.cancelled() and outcome.exception() is None:
        report_images(http, len(outcome.result().images))


def _to_request(served: ServedModel, body: Body, images: list) -> GenerationRequest:
    width, height = size_sides(body.size)
    try:
        check_loras(body.loras)  # its errors name the entry: loras[1].scale
    except InvalidRequest as exc:
        raise invalid(exc.field, exc.reason) from None
    return to_request(
        served.spec, sent(body), PARAMS, index="message",
        images=images, width=width, height=height, num_images=1 if body.n is None else body.n,
    )  # fmt: skip


def _output_options(body: Body, safety_check: bool) -> OutputOptions:
    fmt, compression = body.output_format, body.output_compression
    quality = compression if fmt != "png" else None  # PNG is lossless: compression does not apply
    # response_format 'url', 'b64_json', or None when omitted: then both (OpenAI's image models answer
    # b64_json, clients written for DALL-E read url); only b64_json alone leaves the images unstored
    return OutputOptions(
        format=fmt, quality=quality, store=body.response_format != "b64_json", safety_check=safety_check
    )


async def _json_body(request: Request) -> dict:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/"):
        raise ApiError(415, "send the request as JSON (Content-Type: application/json)")
    return await json_object(request)


async def _response_body(
    service: ImageService,
    http: Request,
    generated: Generated,
    options: OutputOptions,
    response_format: str | None,
    prompt: str,
) -> dict:
    base_url = str(http.base_url)
    data = []
    for image in generated.images:
        item: dict[str, Any] = {}
        if response_format in (None, "b64_json"):
            item["b64_json"] = await image_base64(image)
        if response_format in (None, "url"):  # a flagged image is never stored: a black image inline
            item["url"] = await image_url(service, image, base_url)
        data.append({**item, "revised_prompt": prompt})
    first = generated.images[0]
    return {
        "created": int(time.time()),
        "data": data,
        "background": "opaque",
        "output_format": options.format,
        "size": f"{first.width}x{first.height}",
        "usage": generated.usage.openai() if generated.usage else None,
        "seed": generated.seed,
        "has_nsfw_concepts": generated.has_nsfw_concepts,
        "job_id": generated.job_id,
        "timings": rounded_timings(generated.timings),
    }


def _model_entry(served: ServedModel) -> dict:
    return {
        "id": served.spec.id,
        "object": "model",
        "created": CREATED,
        "owned_by": "kleinserve-demo (random weights)" if served.demo else "black-forest-labs",
        "aliases": list(served.spec.aliases),
        "ready": served.state == "ready",
        "state": served.state,
        **demo_warning(served),
    }
