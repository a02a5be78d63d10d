"""The fal dialect's routes: the FLUX.2 [klein] endpoints as fal serves them, synchronously and through a
queue.

    POST /{endpoint}                        the output JSON (fal.run; fal_client.run)
    POST /{endpoint}/stream                 server-sent events while it runs (stream.py)
    POST /queue/{endpoint}[?fal_webhook=]   {request_id, response_url, status_url, cancel_url, queue_position}
    GET  /queue/{owner}/{alias}/requests/{id}/...   status, result and cancel (queue.py)

Endpoints are fal-ai/flux-2/klein/{4b,9b}[/edit] and the Base (/base) and KV (/kv) variants, each routed
to the served model it names, and the LoRA endpoints: the same paths ending in /lora (fal's
fal-ai/flux-2/klein/{4b,9b}[/base][/edit]/lora) take `loras` too; elsewhere `loras` is a 422.
fal-client reaches this server with FAL_RUN_HOST=host:port and
FAL_QUEUE_RUN_HOST=host:port/queue (see the README).
"""

from __future__ import annotations

import asyncio
from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from kleinserve.api import openapi_docs as docs
from kleinserve.api.access import owner_of
from kleinserve.api.client_gone import unless_client_leaves
from kleinserve.api.dialect_request import COMMON_FIELDS, to_request, validated
from kleinserve.api.dialect_response import generation_headers
from kleinserve.api.errors import ApiError, FalError, invalid
from kleinserve.api.fal import queue
from kleinserve.api.fal import stream as event_stream
from kleinserve.api.fal.output import REQUEST_ID_HEADER, output
from kleinserve.api.fal.schemas import (
    FalBaseInput,
    FalBaseLoraInput,
    FalInput,
    FalLoraInput,
    FalOutput,
    QueueSubmitted,
    image_sides,
    input_schema,
)
from kleinserve.api.fal.webhook import check_webhook
from kleinserve.api.json_body import json_object
from kleinserve.api.request_metrics import report_images, report_model
from kleinserve.api.step_stream import HEADERS as STREAM_HEADERS
from kleinserve.errors import ModelNotServed, UnknownModel
from kleinserve.models import resolve_model
from kleinserve.request import GenerationRequest, OutputOptions
from kleinserve.service.facade import ImageService
from kleinserve.service.served_models import ServedModel

ENDPOINT_PREFIX = "fal-ai/flux-2/klein/"
# build_request's arguments -> the fal input fields they come from (and errors name)
FIELDS = {**COMMON_FIELDS, "num_images": "num_images", "width": "image_size", "height": "image_size",
          "images": "image_urls", "loras": "loras"}  # fmt: skip
LORA_SUFFIX = "/lora"
SINGLE_IMAGE_FIELDS = {**FIELDS, "images": "image_url"}  # one reference as image_url (@ai-sdk/fal)


def _documented_body() -> dict:
    """One operation serves every endpoint: its body is FalInput (distilled, KV) or FalBaseInput (Base), with
    `loras` on the /lora endpoints."""
    schemas = [docs.json_body(s)["requestBody"]["content"]["application/json"]["schema"]
               for s in (FalInput, FalBaseInput, FalLoraInput, FalBaseLoraInput)]  # fmt: skip
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"anyOf": schemas}}}}
    }


BODY = _documented_body()


def router(service: ImageService) -> APIRouter:
    routes = APIRouter()

    @routes.post(
        "/queue/{endpoint:path}",
        openapi_extra=BODY,
        responses=docs.answers(QueueSubmitted, FalError, 404, 422, *docs.SERVICE),
    )
    async def submit(endpoint: str, request: Request) -> JSONResponse:
        served, generation, options, webhook = await _parse(service, request, endpoint, queued=True)
        params = {**_params(endpoint, options, webhook), "base_url": str(request.base_url)}
        owner = owner_of(request)
        job = await service.submit(
            served, generation, options, params, detached=True, owner=owner, webhook=webhook
        )
        urls = queue.request_urls(request, endpoint, job.id)
        body = {"request_id": job.id, **urls, "queue_position": await service.queue_position(job) or 0}
        return JSONResponse(body, headers=generation_headers(served, job.id, REQUEST_ID_HEADER))

    routes.include_router(queue.router(service))  # a submitted request's status, result, cancel

    @routes.post(
        "/fal-ai/{path:path}/stream",
        openapi_extra=BODY,
        responses=docs.answers(None, FalError, 404, 422, *docs.SERVICE, media="text/event-stream"),
    )
    async def stream(path: str, request: Request) -> StreamingResponse:
        endpoint = f"fal-ai/{path}"
        served, generation, options, _ = await _parse(service, request, endpoint, queued=False)
        report_model(request, served.spec.id)
        steps: asyncio.Queue = asyncio.Queue()
        params = {**_params(endpoint, options, None), "stream": True}
        listener = lambda *step: steps.put_nowait(step)  # noqa: E731
        job = await service.submit(
            served, generation, options, params, on_step=listener, owner=owner_of(request)
        )
        outcome = asyncio.ensure_future(service.outcome(job))
        outcome.add_done_callback(partial(_count_delivered, request))
        render = partial(output, service, prompt=generation.prompt, base_url=str(request.base_url))
        events = event_stream.events(job.id, generation.seed, steps, outcome, render)
        headers = {**generation_headers(served, job.id, REQUEST_ID_HEADER), **STREAM_HEADERS}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    @routes.post(
        "/fal-ai/{path:path}",
        openapi_extra=BODY,
        responses=docs.answers(FalOutput, FalError, 404, 422, *docs.SERVICE),
    )
    async def run(path: str, request: Request) -> JSONResponse:
        endpoint = f"fal-ai/{path}"
        served, generation, options, _ = await _parse(service, request, endpoint, queued=False)
        report_model(request, served.spec.id)  # per-model latency stats
        params = _params(endpoint, options, None)
        generated = await unless_client_leaves(
            request, service.generate(served, generation, options, params, owner=owner_of(request))
        )
        report_images(request, len(generated.images))
        body = await output(service, generated, generation.prompt, str(request.base_url))
        return JSONResponse(body, headers=generation_headers(served, generated.job_id, REQUEST_ID_HEADER))

    return routes


def _count_delivered(http: Request, outcome: asyncio.Future) -> None:
    """A streamed generation's images, once they are out (per-model images/s)."""
    if not outcome.cancelled() and outcome.exception() is None:
        report_images(http, len(outcome.result().images))


# --- input -----------------------------------------------------------------------------------------


async def _parse(service: ImageService, http: Request, endpoint: str, *, queued: bool):
    served, edit, lora = _endpoint(service, endpoint)
    fields = await json_object(http)
    if not lora and "loras" in fields:
        raise invalid(
            "loras", f"{endpoint.strip('/')} takes no LoRAs; send them to {endpoint.strip('/')}/lora"
        )
    webhook = http.query_params.get("fal_webhook") if queued else None
    if webhook is not None:
        await check_webhook(service, webhook)
    limit = served.spec.max_reference_images
    schema = input_schema(served.spec.uses_cfg, lora)  # fal's Base defaults on Base endpoints
    body = validated(schema, fields, endpoint=endpoint, edit=edit, max_images=limit)
    width, height = image_sides(body.image_size, edit)
    options = OutputOptions(
        format=body.output_format, store=not body.sync_mode, safety_check=body.enable_safety_checker
    )
    urls = body.reference_urls(edit)
    _precheck(served, body, width, height)  # cheap checks before any download
    single = body.sends_one_image
    names = ["image_url"] if single else [f"image_urls[{i}]" for i in range(len(urls))]
    images = await asyncio.gather(
        *(service.fetch_reference(url, name) for url, name in zip(urls, names, strict=True))
    )
    return served, _to_request(served, body, list(images), width, height), options, webhook


def _endpoint(service: ImageService, endpoint: str) -> tuple[ServedModel, bool, bool]:
    """(the served model, edit endpoint?, LoRA endpoint?)"""
    endpoint = endpoint.strip("/")
    if not endpoint.startswith(ENDPOINT_PREFIX):
        raise HTTPException(404)
    lora = endpoint.endswith(LORA_SUFFIX)
    endpoint = endpoint.removesuffix(LORA_SUFFIX)
    try:
        spec = resolve_model(endpoint)
    except UnknownModel:
        raise ApiError(404, f"no endpoint {endpoint}; {_served_endpoints(service)}") from None
    try:
        served = service.model(spec.id)
    except ModelNotServed:
        raise ApiError(
            404, f"{endpoint} runs {spec.id}, which this server does not serve; {_served_endpoints(service)}"
        ) from None
    return served, endpoint.endswith("/edit"), lora


def _served_endpoints(service: ImageService) -> str:
    endpoints = [_fal_endpoint(served) for served in service.models]
    return "it serves " + ", ".join(f"{e}[/edit][/lora]" for e in endpoints if e)


def _fal_endpoint(served: ServedModel) -> str | None:
    return next((a for a in served.spec.aliases if a.startswith(ENDPOINT_PREFIX)), None)


def _precheck(served: ServedModel, body: FalInput, width, height) -> None:
    """Every field but the images, before any download (an edit's default size is not known yet)."""
    if width is None and height is None:
        width, height = served.spec.default_size
    _to_request(served, body, [], width, height)


def _to_request(served: ServedModel, body: FalInput, images: list, width, height) -> GenerationRequest:
    single = body.sends_one_image
    names, index = (SINGLE_IMAGE_FIELDS, "nowhere") if single else (FIELDS, "field")
    fields = body.request_fields()
    return to_request(served.spec, fields, names, index=index, images=images, width=width, height=height)


def _params(endpoint: str, options: OutputOptions, webhook: str | None) -> dict:
    return {"dialect": "fal", "endpoint": endpoint, "sync_mode": not options.store,
            "enable_safety_checker": options.safety_check, "webhook": webhook}  # fmt: skip
