"""The fal dialect: the FLUX.2 [klein] endpoints as fal serves them, synchronously and through a queue.

    POST /{endpoint}                        the output JSON (fal.run; fal_client.run)
    POST /{endpoint}/stream                 server-sent events while it runs (fal_stream.py)
    POST /queue/{endpoint}[?fal_webhook=]   {request_id, response_url, status_url, cancel_url, queue_position}
    GET  /queue/{owner}/{alias}/requests/{id}/...   status, result and cancel (fal_queue.py)

Endpoints are fal-ai/flux-2/klein/{4b,9b}[/edit] and the Base (/base) and KV (/kv) variants, each routed
to the served model it names. fal-client reaches this server with FAL_RUN_HOST=host:port and
FAL_QUEUE_RUN_HOST=host:port/queue (see the README).
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from kleinserve.api import openapi_docs as docs
from kleinserve.api.access import owner_of
from kleinserve.api.client_gone import unless_client_leaves
from kleinserve.api.dialect_request import COMMON_FIELDS, to_request
from kleinserve.api.dialect_response import generation_headers, image_url, rounded_timings
from kleinserve.api.errors import ApiError, invalid
from kleinserve.api.fal import queue as fal_queue
from kleinserve.api.fal import stream as fal_stream
from kleinserve.api.fal.queue import REQUEST_ID_HEADER, inference_time
from kleinserve.api.json_body import json_object
from kleinserve.errors import ModelNotServed, UnknownModel
from kleinserve.imaging import OUTPUT_FORMATS, extension_of
from kleinserve.models import resolve_model
from kleinserve.request import GenerationRequest, OutputOptions
from kleinserve.service.facade import ImageService
from kleinserve.service.outputs import Generated, OutputImage
from kleinserve.service.served_models import ServedModel

ENDPOINT_PREFIX = "fal-ai/flux-2/klein/"
PRESETS = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
DEFAULT_PRESET = "landscape_4_3"
# build_request's arguments -> the fal input fields they come from (and errors name)
FIELDS = {**COMMON_FIELDS, "num_images": "num_images", "width": "image_size", "height": "image_size",
          "images": "image_urls"}  # fmt: skip
SINGLE_IMAGE_FIELDS = {**FIELDS, "images": "image_url"}  # one reference as image_url (@ai-sdk/fal)


def router(service: ImageService) -> APIRouter:
    routes = APIRouter()

    @routes.post(
        "/queue/{endpoint:path}",
        openapi_extra=docs.json_body(docs.FalInput),
        responses=docs.answers(docs.QueueSubmitted, docs.FalError, 404, 422, *docs.SERVICE),
    )
    async def submit(endpoint: str, request: Request) -> JSONResponse:
        served, generation, options, webhook = await _parse(service, request, endpoint, queued=True)
        params = {**_params(endpoint, options, webhook), "base_url": str(request.base_url)}
        owner = owner_of(request)
        job = await service.submit(
            served, generation, options, params, detached=True, owner=owner, webhook=webhook
        )
        urls = fal_queue.request_urls(request, endpoint, job.id)
        body = {"request_id": job.id, **urls, "queue_position": await service.queue_position(job) or 0}
        return JSONResponse(body, headers=generation_headers(served, job.id, REQUEST_ID_HEADER))

    routes.include_router(fal_queue.router(service, output))  # a submitted request's status, result, cancel
    # sent from the job's record by whichever API server claims it (webhook_queue.py): survives restarts
    service.webhook_queue.add_sender(fal_queue.webhook_sender(service, output))

    @routes.post(
        "/fal-ai/{path:path}/stream",
        openapi_extra=docs.json_body(docs.FalInput),
        responses=docs.answers(None, docs.FalError, 404, 422, *docs.SERVICE, media="text/event-stream"),
    )
    async def stream(path: str, request: Request) -> StreamingResponse:
        endpoint = f"fal-ai/{path}"
        served, generation, options, _ = await _parse(service, request, endpoint, queued=False)
        request.state.model = served.spec.id
        steps: asyncio.Queue = asyncio.Queue()
        params = {**_params(endpoint, options, None), "stream": True}
        listener = lambda *step: steps.put_nowait(step)  # noqa: E731
        job = await service.submit(
            served, generation, options, params, on_step=listener, owner=owner_of(request)
        )
        outcome = asyncio.ensure_future(service.outcome(job))
        outcome.add_done_callback(partial(_count_delivered, request))
        render = partial(output, service, prompt=generation.prompt, base_url=str(request.base_url))
        events = fal_stream.events(job.id, generation.seed, steps, outcome, render)
        headers = {**generation_headers(served, job.id, REQUEST_ID_HEADER), **fal_stream.HEADERS}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    @routes.post(
        "/fal-ai/{path:path}",
        openapi_extra=docs.json_body(docs.FalInput),
        responses=docs.answers(docs.FalOutput, docs.FalError, 404, 422, *docs.SERVICE),
    )
    async def run(path: str, request: Request) -> JSONResponse:
        endpoint = f"fal-ai/{path}"
        served, generation, options, _ = await _parse(service, request, endpoint, queued=False)
        request.state.model = served.spec.id  # per-model latency stats
        params = _params(endpoint, options, None)
        generated = await unless_client_leaves(
            request, service.generate(served, generation, options, params, owner=owner_of(request))
        )
        request.state.images = len(generated.images)  # per-model images/s
        body = await output(service, generated, generation.prompt, str(request.base_url))
        return JSONResponse(body, headers=generation_headers(served, generated.job_id, REQUEST_ID_HEADER))

    return routes


def _count_delivered(http: Request, outcome: asyncio.Future) -> None:
    """A streamed generation's images, once they are out (per-model images/s)."""
    if not outcome.cancelled() and outcome.exception() is None:
        http.state.images = len(outcome.result().images)


# --- input -----------------------------------------------------------------------------------------


async def _parse(service: ImageService, http: Request, endpoint: str, *, queued: bool):
    served, edit = _endpoint(service, endpoint)
    fields = await json_object(http)
    webhook = http.query_params.get("fal_webhook") if queued else None
    if webhook is not None:
        await fal_queue.check_webhook(service, webhook)
    width, height = _image_size(fields.get("image_size"), edit)
    options = _output_options(fields)
    urls = _image_urls(fields, edit, endpoint, served.spec.max_reference_images)
    _precheck(served, fields, width, height)  # cheap checks before any download
    names = ["image_url"] if "image_url" in fields else [f"image_urls[{i}]" for i in range(len(urls))]
    images = await asyncio.gather(
        *(service.fetch_reference(url, name) for url, name in zip(urls, names, strict=True))
    )
    return served, _to_request(served, fields, list(images), width, height), options, webhook


def _endpoint(service: ImageService, endpoint: str) -> tuple[ServedModel, bool]:
    endpoint = endpoint.strip("/")
    if not endpoint.startswith(ENDPOINT_PREFIX):
        raise HTTPException(404)
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
    return served, endpoint.endswith("/edit")


def _served_endpoints(service: ImageService) -> str:
    endpoints = [_fal_endpoint(served) for served in service.models]
    return "it serves " + ", ".join(f"{e} and {e}/edit" for e in endpoints if e)


def _fal_endpoint(served: ServedModel) -> str | None:
    return next((a for a in served.spec.aliases if a.startswith(ENDPOINT_PREFIX)), None)


def _image_size(value: Any, edit: bool) -> tuple[int | None, int | None]:
    if value is None:
        return (None, None) if edit else PRESETS[DEFAULT_PRESET]  # edits default to the first input's size
    if isinstance(value, str):
        if value not in PRESETS:
            raise invalid("image_size", f"unknown preset {value!r}; use one of {', '.join(PRESETS)} "
                          'or {"width": W, "height": H}')  # fmt: skip
        return PRESETS[value]
    if isinstance(value, dict) and set(value) <= {"width", "height"}:
        return value.get("width"), value.get("height")
    raise invalid("image_size", f'must be a preset name or {{"width": W, "height": H}}, got {value!r}')


def _image_urls(fields: dict, edit: bool, endpoint: str, limit: int) -> list:
    """`image_urls`, or one `image_url` (what @ai-sdk/fal sends)."""
    value, single = fields.get("image_urls"), fields.get("image_url")
    if not edit:
        if value or single:
            name = "image_urls" if value else "image_url"
            raise invalid(name, f"only edit endpoints take reference images; POST to {endpoint}/edit")
        return []
    if single is not None:
        if value is not None:
            raise invalid("image_url", "give the reference images as image_urls or one image_url, not both")
        if not isinstance(single, str):
            raise invalid("image_url", f"must be one image URL or data URI, got {repr(single)[:80]}")
        return [single]
    if value is None:
        raise invalid("image_urls", f"is required by {endpoint}: give 1 to {limit} image URLs or data URIs")
    if not isinstance(value, list) or not value or len(value) > limit:
        got = f"{len(value)} URLs" if isinstance(value, list) else repr(value)[:80]
        raise invalid("image_urls", f"must be a list of 1 to {limit} image URLs or data URIs, got {got}")
    return value


def _output_options(fields: dict) -> OutputOptions:
    fmt = fields.get("output_format", "png")
    if not isinstance(fmt, str) or fmt not in OUTPUT_FORMATS:
        raise invalid("output_format", f"must be one of {', '.join(sorted(OUTPUT_FORMATS))}; got {fmt!r}")
    sync_mode = _bool(fields, "sync_mode", False)
    return OutputOptions(
        format=fmt, store=not sync_mode, safety_check=_bool(fields, "enable_safety_checker", True)
    )


def _bool(fields: dict, name: str, default: bool) -> bool:
    value = fields.get(name, default)
    if not isinstance(value, bool):
        raise invalid(name, f"must be true or false, got {value!r}")
    return value


def _precheck(served: ServedModel, fields: dict, width, height) -> None:
    """Every field but the images, before any download (an edit's default size is not known yet)."""
    if fields.get("prompt") is None:
        raise invalid("prompt", "field required: describe the image you want")
    if width is None and height is None:
        width, height = served.spec.default_size
    _to_request(served, fields, [], width, height)


def _to_request(served: ServedModel, fields: dict, images: list, width, height) -> GenerationRequest:
    names, index = (SINGLE_IMAGE_FIELDS, "nowhere") if "image_url" in fields else (FIELDS, "field")
    return to_request(served.spec, fields, names, index=index, images=images, width=width, height=height)


def _params(endpoint: str, options: OutputOptions, webhook: str | None) -> dict:
    return {"dialect": "fal", "endpoint": endpoint, "sync_mode": not options.store,
            "enable_safety_checker": options.safety_check, "webhook": webhook}  # fmt: skip


# --- output ----------------------------------------------------------------------------------------


async def output(service: ImageService, generated: Generated, prompt: str, base_url: str) -> dict:
    """fal's output JSON for a finished generation (the synchronous answer, a queue result, a webhook's
    payload, a stream's last event)."""
    images = [
        {
            "url": await image_url(service, image, base_url),
            "content_type": image.content_type,
            "file_name": _file_name(image, index),
            "file_size": image.size,
            "width": image.width,
            "height": image.height,
        }
        for index, image in enumerate(generated.images)
    ]
    return {
        "images": images,
        "seed": generated.seed,
        "prompt": prompt,
        "has_nsfw_concepts": generated.has_nsfw_concepts,
        "timings": {"inference": inference_time(generated.timings), **rounded_timings(generated.timings)},
    }


def _file_name(image: OutputImage, index: int) -> str:
    """A stored image's file name; an inline image is named by its place."""
    if image.key is not None:
        return image.key.rsplit("/", 1)[-1]
    return f"{index}.{extension_of(image.content_type)}"
