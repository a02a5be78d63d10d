"""The OpenAI Images dialect: POST /v1/images/generations (JSON), POST /v1/images/edits (multipart),
GET /v1/models[/{id}]. Schemas in, GenerationRequest out; results back in OpenAI's response shape."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from kleinserve.api import openapi_docs as docs
from kleinserve.api import request_ids
from kleinserve.api.access import owner_of
from kleinserve.api.client_gone import unless_client_leaves
from kleinserve.api.dialect_request import COMMON_FIELDS, to_request
from kleinserve.api.dialect_response import (
    demo_warning,
    generation_headers,
    image_base64,
    image_url,
    rounded_timings,
)
from kleinserve.api.errors import ApiError, invalid
from kleinserve.api.json_body import json_object
from kleinserve.api.openai import multipart as openai_multipart
from kleinserve.imaging import FORMAT_NAMES
from kleinserve.request import GenerationRequest, OutputOptions, parse_size
from kleinserve.service.facade import ImageService
from kleinserve.service.outputs import Generated
from kleinserve.service.served_models import ServedModel

RESPONSE_FORMATS = ("url", "b64_json")
QUALITIES = ("auto", "low", "medium", "high", "standard", "hd")
SUPPORTED = {
    "prompt", "model", "n", "size", "response_format", "output_format", "output_compression",
    "seed", "num_inference_steps", "guidance_scale", "negative_prompt", "quality",
}  # fmt: skip
# OpenAI parameters that do not change what this model does: accepted and ignored.
IGNORED = {"style", "moderation", "user", "safety_identifier", "input_fidelity", "complexity",
           "partial_images"}  # fmt: skip
# build_request's arguments -> the OpenAI parameters they come from (and errors name)
PARAMS = {**COMMON_FIELDS, "num_images": "n", "width": "size", "height": "size", "images": "image"}
# Numbers may come as text (multipart form fields, or JSON strings): converted before build_request.
NUMBERS = {"n": int, "seed": int, "num_inference_steps": int, "guidance_scale": float,
           "output_compression": int}  # fmt: skip
REQUEST_ID_HEADER = request_ids.HEADER.decode()
CREATED = 1768348800  # 2026-01-14, FLUX.2 [klein]'s release, for /v1/models


def router(service: ImageService) -> APIRouter:
    routes = APIRouter(prefix="/v1")

    @routes.post(
        "/images/generations",
        openapi_extra=docs.json_body(docs.ImagesRequest),
        responses=docs.answers(docs.ImagesResponse, docs.OpenAIError, 404, 415, *docs.SERVICE),
    )
    async def generations(request: Request) -> JSONResponse:
        fields = await _json_body(request)
        served = _served_model(service, request, fields)
        return await _generate(service, request, served, fields, images=[], route="generations")

    @routes.post(
        "/images/edits",
        openapi_extra=docs.multipart_body(docs.EditForm),
        responses=docs.answers(docs.ImagesResponse, docs.OpenAIError, 404, 415, *docs.SERVICE),
    )
    async def edits(request: Request) -> JSONResponse:
        fields, uploads = await openai_multipart.read_form(request)
        served = _served_model(service, request, _check_fields(fields))
        images = await openai_multipart.decode_uploads(service, uploads, served.spec.max_reference_images)
        return await _generate(service, request, served, fields, images=images, route="edits")

    @routes.get("/models", responses=docs.answers(None, docs.OpenAIError))
    async def models() -> dict:
        return {"object": "list", "data": [_model_entry(m) for m in service.models]}

    @routes.get("/models/{name:path}", responses=docs.answers(None, docs.OpenAIError, 404))
    async def model(name: str) -> dict:
        return _model_entry(service.model(name))

    return routes


def _served_model(service: ImageService, http: Request, fields: dict) -> ServedModel:
    served = service.model(_optional_str(fields, "model"))
    http.state.model = served.spec.id  # per-model latency stats
    return served


async def _generate(
    service: ImageService, http: Request, served: ServedModel, fields: dict, *, images: list, route: str
):
    # 'url', 'b64_json', or None when omitted: then both (OpenAI's image models answer b64_json, clients
    # written for DALL-E read url)
    response_format = _choice(fields, "response_format", RESPONSE_FORMATS, None, "'url' or 'b64_json'")
    options = _output_options(fields, response_format, service.settings.safety_check_openai)
    # accepted for compatibility and echoed: FLUX.2 [klein] has one quality (steps set the effort)
    quality = _choice(fields, "quality", QUALITIES, "auto", f"one of {', '.join(QUALITIES)}")
    request = _to_request(served, fields, images)
    params = {"dialect": "openai", "route": route, "response_format": response_format or "url+b64_json"}
    generated = await unless_client_leaves(
        http, service.generate(served, request, options, params, owner=owner_of(http))
    )
    http.state.images = len(generated.images)  # per-model images/s
    body = await _response_body(service, http, generated, options, response_format, fields.get("prompt"))
    headers = generation_headers(served, generated.job_id, REQUEST_ID_HEADER)
    return JSONResponse({**body, "quality": quality, "model": served.spec.id}, headers=headers)


def _to_request(served: ServedModel, fields: dict, images: list) -> GenerationRequest:
    if fields.get("prompt") is None:
        raise invalid("prompt", "is required; describe the image you want")
    n = _number(fields, "n")
    width, height = _size(fields.get("size"))
    return to_request(
        served.spec, fields, PARAMS, read=_field, index="message",
        images=images, width=width, height=height, num_images=1 if n is None else n,
    )  # fmt: skip


def _size(value: Any) -> tuple[int | None, int | None]:
    if value is None or value == "auto":
        return None, None
    if not isinstance(value, str):
        raise invalid("size", f"must be a string like '1024x768' or 'auto', got {value!r}")
    return parse_size(value, "size")  # InvalidRequest: a 400 naming size


def _field(fields: dict, name: str) -> Any:
    """An OpenAI field as build_request takes it."""
    return _optional_str(fields, name) if name == "negative_prompt" else _number(fields, name)


def _number(fields: dict, name: str) -> Any:
    """JSON numbers pass through (build_request checks them); NUMBERS sent as text are converted here."""
    value, kind = fields.get(name), NUMBERS.get(name)
    if kind is None or not isinstance(value, str):
        return value
    try:
        return kind(value.strip())
    except ValueError:
        raise invalid(name, f"must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None


def _optional_str(fields: dict, name: str) -> str | None:
    value = fields.get(name)
    if value is not None and not isinstance(value, str):
        raise invalid(name, f"must be a string, got {type(value).__name__}")
    return value


def _choice(
    fields: dict, name: str, choices: Collection[str], default: str | None, expected: str, *, fold_case=False
) -> str | None:
    """A field that takes one of `choices` (a dict also says what each means); `default` when omitted."""
    value = fields.get(name)
    if value is None:
        return default
    key = value.lower() if fold_case and isinstance(value, str) else value
    if not isinstance(value, str) or key not in choices:
        raise invalid(name, f"must be {expected}, got {value!r}")
    return choices[key] if isinstance(choices, dict) else key


def _output_options(fields: dict, response_format: str | None, safety_check: bool) -> OutputOptions:
    fmt = _choice(fields, "output_format", FORMAT_NAMES, "png", "png, jpeg or webp", fold_case=True)
    compression = _number(fields, "output_compression")
    if compression is not None and (
        isinstance(compression, bool) or not isinstance(compression, int) or not 0 <= compression <= 100
    ):
        raise invalid("output_compression", f"must be an integer from 0 to 100, got {compression!r}")
    quality = compression if fmt != "png" else None  # PNG is lossless: compression does not apply
    return OutputOptions(
        format=fmt, quality=quality, store=response_format != "b64_json", safety_check=safety_check
    )


def _check_fields(fields: dict) -> dict:
    for name, value in fields.items():
        if name in SUPPORTED or name in IGNORED:
            continue
        if name == "background":
            if value == "transparent":
                raise invalid(
                    "background",
                    "transparent backgrounds are not supported: FLUX.2 [klein] has no alpha; "
                    "use 'opaque' or 'auto'",
                )
            continue
        if name == "stream":
            if value in (True, "true", "True", "1"):
                raise invalid("stream", "streaming is not supported; leave it out or set it to false")
            continue
        if name == "mask":
            raise invalid(
                "mask", "masks are not supported by FLUX.2 [klein]; describe the edit in the prompt"
            )
        raise invalid(name, f"unknown parameter; supported: {', '.join(sorted(SUPPORTED))}")
    return fields


async def _json_body(request: Request) -> dict:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/"):
        raise ApiError(415, "send the request as JSON (Content-Type: application/json)")
    return _check_fields(await json_object(request))


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
