"""The OpenAI Images dialect: POST /v1/images/generations (JSON), POST /v1/images/edits (multipart),
GET /v1/models[/{id}]. Schemas in, GenerationRequest out; results back in OpenAI's response shape."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from kleinserve.api import openapi_docs as docs
from kleinserve.api.access import owner_of
from kleinserve.api.client_gone import unless_client_leaves
from kleinserve.api.errors import ApiError, invalid
from kleinserve.api.json_body import json_object
from kleinserve.errors import InvalidRequest
from kleinserve.imaging import base64_text, data_uri
from kleinserve.outputs import Generated, OutputOptions
from kleinserve.request import build_request, parse_size
from kleinserve.service import DEMO_LABEL, ImageService, ServedModel

RESPONSE_FORMATS = ("url", "b64_json")
QUALITIES = ("auto", "low", "medium", "high", "standard", "hd")
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
SUPPORTED = {
    "prompt", "model", "n", "size", "response_format", "output_format", "output_compression",
    "seed", "num_inference_steps", "guidance_scale", "negative_prompt", "quality",
}  # fmt: skip
# OpenAI parameters that do not change what this model does: accepted and ignored.
IGNORED = {"style", "moderation", "user", "safety_identifier", "input_fidelity", "complexity",
           "partial_images"}  # fmt: skip
# Our internal field names -> the OpenAI parameter a user sent.
PARAMS = {"num_images": "n", "steps": "num_inference_steps", "guidance": "guidance_scale", "width": "size",
          "height": "size", "images": "image"}  # fmt: skip
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
        fields, uploads = await _multipart_body(request)
        served = _served_model(service, request, fields)
        images = await _decode_uploads(service, uploads, served.spec.max_reference_images)
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
    response_format = _response_format(fields)
    options = _output_options(fields, response_format)
    options = replace(options, safety_check=service.settings.safety_check_openai)
    quality = _quality(fields)
    request = _to_request(served, fields, images)
    params = {"dialect": "openai", "route": route, "response_format": response_format or "url+b64_json"}
    generated = await unless_client_leaves(
        http, service.generate(served, request, options, params, owner=owner_of(http))
    )
    body = await _response_body(service, http, generated, options, response_format, fields.get("prompt"))
    headers = {"x-request-id": generated.job_id, "x-kleinserve-job-id": generated.job_id}
    if served.demo:
        headers["x-kleinserve-warning"] = DEMO_LABEL
    return JSONResponse({**body, "quality": quality, "model": served.spec.id}, headers=headers)


def _to_request(served: ServedModel, fields: dict, images: list):
    if fields.get("prompt") is None:
        raise invalid("prompt", "is required; describe the image you want")
    n = _number(fields, "n", int)
    try:
        width, height = _size(fields.get("size"))
        return build_request(
            served.spec,
            prompt=fields.get("prompt"),
            images=images,
            width=width,
            height=height,
            steps=_number(fields, "num_inference_steps", int),
            guidance=_number(fields, "guidance_scale", float),
            seed=_number(fields, "seed", int),
            num_images=1 if n is None else n,
            negative_prompt=_optional_str(fields, "negative_prompt"),
        )
    except InvalidRequest as exc:
        raise _openai_error(exc) from exc


def _openai_error(exc: InvalidRequest) -> ApiError:
    name = exc.field.split("[")[0]
    param = PARAMS.get(name, exc.field)
    if exc.field.startswith("images["):
        return invalid(param, f"image {exc.field[len('images') :]} {exc.reason}")
    if name in ("width", "height"):
        return invalid(param, f"{name} {exc.reason}")
    return invalid(param, exc.reason)


def _size(value: Any) -> tuple[int | None, int | None]:
    if value is None or value == "auto":
        return None, None
    if not isinstance(value, str):
        raise InvalidRequest("size", f"must be a string like '1024x768' or 'auto', got {value!r}")
    return parse_size(value, "size")


def _number(fields: dict, name: str, kind: type) -> Any:
    """JSON numbers pass through (build_request checks them); multipart strings are converted here."""
    value = fields.get(name)
    if not isinstance(value, str):
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


def _response_format(fields: dict) -> str | None:
    """'url', 'b64_json', or None when omitted (then both: OpenAI's image models answer b64_json, clients
    written for DALL-E read url)."""
    response_format = fields.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, str) or response_format not in RESPONSE_FORMATS
    ):
        raise invalid("response_format", f"must be 'url' or 'b64_json', got {response_format!r}")
    return response_format


def _quality(fields: dict) -> str:
    """Accepted for compatibility and echoed: FLUX.2 [klein] has one quality (steps set the effort)."""
    quality = fields.get("quality")
    quality = "auto" if quality is None else quality
    if not isinstance(quality, str) or quality not in QUALITIES:
        raise invalid("quality", f"must be one of {', '.join(QUALITIES)}, got {quality!r}")
    return quality


def _output_options(fields: dict, response_format: str | None) -> OutputOptions:
    fmt = fields.get("output_format")
    fmt = "png" if fmt is None else fmt
    if not isinstance(fmt, str) or fmt.lower() not in OUTPUT_FORMATS:
        raise invalid("output_format", f"must be png, jpeg or webp, got {fmt!r}")
    fmt = OUTPUT_FORMATS[fmt.lower()]
    compression = _number(fields, "output_compression", int)
    if compression is not None and (
        isinstance(compression, bool) or not isinstance(compression, int) or not 0 <= compression <= 100
    ):
        raise invalid("output_compression", f"must be an integer from 0 to 100, got {compression!r}")
    quality = compression if fmt != "png" else None  # PNG is lossless: compression does not apply
    return OutputOptions(format=fmt, quality=quality, store=response_format != "b64_json")


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


async def _multipart_body(request: Request) -> tuple[dict, list[UploadFile]]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "send the edit as multipart/form-data with the image(s) as file parts")
    try:
        form = await request.form(max_files=16, max_fields=64, max_part_size=1024 * 1024)
    except HTTPException as exc:
        raise ApiError(400, f"the multipart body could not be read: {exc.detail}") from exc
    fields: dict[str, Any] = {}
    uploads: list[UploadFile] = []
    for name, value in form.multi_items():
        if name in ("image", "image[]"):
            if not isinstance(value, UploadFile):
                raise invalid("image", "must be a file upload (a multipart file part), not a text field")
            uploads.append(value)
        elif name == "mask" or not isinstance(value, UploadFile):
            fields[name] = value
        else:
            raise invalid(name, "is a file, but only `image` and `image[]` take files")
    if not uploads:
        raise invalid("image", "is required: upload 1 to 4 reference images as `image` or `image[]`")
    return _check_fields(fields), uploads


async def _decode_uploads(service: ImageService, uploads: list[UploadFile], max_images: int) -> list:
    max_bytes = service.settings.max_image_bytes
    if len(uploads) > max_images:  # refused before anything is read or decoded
        raise invalid(
            "image", f"{len(uploads)} images given; FLUX.2 [klein] takes 1 to {max_images} reference images"
        )
    images = []
    for index, upload in enumerate(uploads):
        name = f"image[{index}] ({upload.filename or 'unnamed'})"
        if upload.size is not None and upload.size > max_bytes:
            raise ApiError(
                413,
                f"{name} is {upload.size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB",
                param="image",
            )
        data = await upload.read()
        if not data:
            raise invalid("image", f"{name} is empty (0 bytes)")
        images.append(await service.decode_reference(data, name, "image"))
    return images


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
            item["b64_json"] = await base64_text(image.data)
        if response_format in (None, "url"):  # a flagged image is never stored: a black image inline
            item["url"] = (
                service.file_url(image.key, base_url)
                if image.key
                else await data_uri(image.data, image.content_type)
            )
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
        "timings": {stage: round(seconds, 4) for stage, seconds in generated.timings.items()},
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
        **({"warning": DEMO_LABEL} if served.demo else {}),
    }
