"""The Vercel AI Gateway image dialect's route: POST /v1/ai/image-model, where @ai-sdk/gateway's image
model posts when created with `createGateway({ baseURL: "<server>/v1/ai" })`. The model comes in the
`ai-model-id` header (`bfl/flux-2-klein-4b`, or any name kleinserve knows the model by), the body is
checked by GatewayImageRequest (schemas.py) and becomes a GenerationRequest; the images go back as base64
PNGs, with the seed, job id and timings in providerMetadata.kleinserve."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from kleinserve.api import openapi_docs as docs
from kleinserve.api.access import owner_of
from kleinserve.api.client_gone import unless_client_leaves
from kleinserve.api.dialect_request import to_request, validated
from kleinserve.api.dialect_response import generation_headers, image_base64, rounded_timings
from kleinserve.api.errors import invalid
from kleinserve.api.gateway.schemas import (
    OPTIONS,
    GatewayError,
    GatewayImageRequest,
    GatewayImageResponse,
    ModelNotFound,
    file_reference,
    model_options,
    ratio_sides,
)
from kleinserve.api.json_body import json_object
from kleinserve.api.request_metrics import report_images, report_model
from kleinserve.errors import ModelNotServed
from kleinserve.request import GenerationRequest, OutputOptions, parse_size
from kleinserve.service.facade import ImageService
from kleinserve.service.outputs import Generated
from kleinserve.service.served_models import ServedModel

MODEL_HEADER = "ai-model-id"
GATEWAY_PREFIX = "bfl/"
MODEL_PARAMETER = {
    "name": MODEL_HEADER, "in": "header", "required": True,
    "schema": {"type": "string", "example": "bfl/flux-2-klein-4b"},
    "description": "the model, as the gateway names it (bfl/flux-2-klein-4b) or by a kleinserve id",
}  # fmt: skip
EXTRA = {**docs.json_body(GatewayImageRequest), "parameters": [MODEL_PARAMETER]}
ANSWERS = docs.answers(GatewayImageResponse, GatewayError, 404, *docs.SERVICE)
# build_request's arguments -> the gateway fields they come from (and errors name)
FIELDS = {"prompt": "prompt", "seed": "seed", "num_images": "n", "width": "size", "height": "size",
          "images": "files"}  # fmt: skip


def router(service: ImageService) -> APIRouter:
    routes = APIRouter(prefix="/v1/ai")

    @routes.post("/image-model", openapi_extra=EXTRA, responses=ANSWERS)
    async def image_model(request: Request) -> JSONResponse:
        served = _served(service, request)
        body = validated(GatewayImageRequest, await json_object(request))
        key, options = model_options(body.providerOptions)
        images = await _references(service, body.files or [])
        generation = _to_request(served, body, images, key, options)
        params = {"dialect": "gateway", "route": "image-model", "response_format": "b64_json"}
        output = OutputOptions(store=False, safety_check=service.settings.safety_check_openai)
        generated = await unless_client_leaves(
            request, service.generate(served, generation, output, params, owner=owner_of(request))
        )
        report_images(request, len(generated.images))
        answer = await _answer(served, generated, _warnings(key, options))
        return JSONResponse(answer, headers=generation_headers(served, generated.job_id, "x-request-id"))

    return routes


def gateway_id(served: ServedModel) -> str:
    """A served model's id as the gateway names it: flux.2-klein-9b -> bfl/flux-2-klein-9b."""
    spec = served.spec
    return GATEWAY_PREFIX + spec.id.replace("flux.2-", "flux-2-") if spec.hf_repo else spec.id


def _served(service: ImageService, http: Request) -> ServedModel:
    """The model the ai-model-id header names (a 400 without one, a 404 naming the served ones)."""
    name = http.headers.get(MODEL_HEADER, "").strip()
    if not name:
        raise invalid(MODEL_HEADER, "the header is required; name the model, e.g. bfl/flux-2-klein-4b")
    try:
        served = service.model(name)
    except ModelNotServed:
        raise ModelNotFound(name, [gateway_id(m) for m in service.models]) from None
    report_model(http, served.spec.id)
    return served


async def _references(service: ImageService, files: list) -> list:
    """The reference images: base64 files decoded, URLs fetched (through the outbound guard)."""
    fetches = [
        service.fetch_reference(file_reference(item, f"files[{index}]"), f"files[{index}]")
        for index, item in enumerate(files)
    ]
    return list(await asyncio.gather(*fetches))


def _to_request(
    served: ServedModel, body: GatewayImageRequest, images: list, key: str, options: dict
) -> GenerationRequest:
    width, height = _sides(body)
    names = {**FIELDS, **{argument: f"providerOptions.{key}.{name}" for name, argument in OPTIONS.items()}}
    fields = {name: getattr(body, name) for name in body.model_fields_set if name in FIELDS.values()}
    given = {OPTIONS[name]: options[name] for name in OPTIONS if options.get(name) is not None}
    return to_request(
        served.spec, fields, names, images=images, width=width, height=height,
        num_images=1 if body.n is None else body.n, **given,
    )  # fmt: skip


def _sides(body: GatewayImageRequest) -> tuple[int | None, int | None]:
    if body.size is not None:
        return parse_size(body.size, "size")
    if body.aspectRatio is not None:
        return ratio_sides(body.aspectRatio)
    return None, None


def _warnings(key: str, options: dict) -> list[dict]:
    """Options under providerOptions.bfl that klein does not take: said, not dropped in silence."""
    return [
        {"type": "unsupported", "feature": f"providerOptions.{key}.{name}",
         "details": f"FLUX.2 [klein] takes only {', '.join(OPTIONS)} here; this one was ignored"}
        for name in options if name not in OPTIONS
    ]  # fmt: skip


async def _answer(served: ServedModel, generated: Generated, warnings: list[dict]) -> dict:
    """The gateway's answer. The AI SDK keeps only providerMetadata.<provider>.images from a provider other
    than `gateway`: each image's entry carries its seed, the job and its timings."""
    images = [await image_base64(image) for image in generated.images]
    job = {"model": served.spec.id, "jobId": generated.job_id, "timings": rounded_timings(generated.timings)}
    entries = [
        {"seed": generated.seed + index, **job, "hasNsfwConcept": image.nsfw}
        for index, image in enumerate(generated.images)
    ]
    metadata = {"images": entries, "seed": generated.seed, **job}
    answer = {"images": images, "warnings": warnings, "providerMetadata": {"kleinserve": metadata}}
    if generated.usage is not None:
        answer["usage"] = _usage(generated.usage)
    return answer


def _usage(usage) -> dict:
    total = usage.input_tokens + usage.output_tokens
    return {"inputTokens": usage.input_tokens, "outputTokens": usage.output_tokens, "totalTokens": total}
