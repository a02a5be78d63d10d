"""A prediction's body -> a queued job: the model's `input` checked (schemas.input_schema: plain or Base, with
or without a LoRA: lora.py), its references fetched, its size worked out from aspect_ratio +
output_megapixels (or `size`), the webhook checked, and the job recorded detached (the job store is the
queue: it runs even if this process dies); a webhook whose filter asks for start or logs is followed from
here (webhook.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request

from kleinserve.api.access import owner_of
from kleinserve.api.dialect_request import to_request, validated
from kleinserve.api.errors import ApiError, invalid
from kleinserve.api.replicate import lora, webhook
from kleinserve.api.replicate.catalog import output_size, takes_lora, version_id
from kleinserve.api.replicate.files import own_file_id
from kleinserve.api.replicate.schemas import (
    AI_SDK_IMAGE_FIELDS,
    EVENTS,
    MAX_IMAGES,
    PredictionBody,
    ReplicateInput,
    input_schema,
)
from kleinserve.api.webhook_target import check_webhook_url
from kleinserve.job import Job
from kleinserve.request import GenerationRequest, OutputOptions
from kleinserve.service.facade import ImageService
from kleinserve.service.served_models import ServedModel

# build_request's arguments -> the input fields they come from (and errors name)
FIELDS = {"prompt": "input.prompt", "seed": "input.seed", "steps": "input.num_inference_steps",
          "guidance": "input.guidance", "num_images": "input.num_outputs", "width": "input.size",
          "height": "input.size", "images": "input.images"}  # fmt: skip
READS = ("prompt", "seed", "num_inference_steps", "guidance", "num_outputs")  # the input fields read as sent
DEFAULT_QUALITY = 80
DATA_URL_KEPT = 64  # characters of a data: URL kept in the prediction's recorded input


async def create(
    service: ImageService, http: Request, served: ServedModel, model: str, body: PredictionBody
) -> Job:
    with_lora = takes_lora(model.split("/")[1])
    if not with_lora:
        lora.refuse_on_plain(model, body.input)
    given = validated(input_schema(served.spec.uses_cfg, with_lora), body.input)
    _refuse_guidance(served, given)
    images = await _references(service, http, _image_urls(given))
    generation = _to_request(served, given, images)
    quality = given.output_quality if given.output_quality is not None else DEFAULT_QUALITY
    image_format = "jpeg" if (given.output_format or "jpg") == "jpg" else given.output_format
    checked = not given.disable_safety_checker
    output = OutputOptions(format=image_format, quality=quality, safety_check=checked)
    if body.webhook is not None:
        await check_webhook_url(service, body.webhook, "webhook")
    events = body.webhook_events_filter or list(EVENTS)
    params = {"dialect": "replicate", "model": model, "version": version_id(model.split("/")[1]),
              "input": _recorded(body.input), "base_url": str(http.base_url), "webhook": body.webhook,
              "webhook_events_filter": events}  # fmt: skip
    followed = body.webhook is not None and webhook.follows(events)
    with lora.named_as_sent():  # the LoRA is fetched and checked against the model here
        job = await service.submit(served, generation, output, params, detached=True, owner=owner_of(http),
                                   webhook=body.webhook, follow_webhook=followed)  # fmt: skip
    if followed:  # this server sends its events while it runs (webhook.py)
        service.background.spawn(webhook.follow(service, job.id))
    return job


def _refuse_guidance(served: ServedModel, given: ReplicateInput) -> None:
    guidance = getattr(given, "guidance", None) or (given.model_extra or {}).get("guidance")
    if guidance is not None and not served.spec.uses_cfg:
        fix = "leave it out (or use black-forest-labs/flux-2-klein-base-4b or -9b)"
        raise invalid("input.guidance", f"{served.spec.id} is step-distilled and takes no guidance; {fix}")


def _image_urls(given: ReplicateInput) -> list[tuple[str, str]]:
    """(field, URL) of each reference: `images`, then @ai-sdk/replicate's input_image, input_image_2..."""
    extra = given.model_extra or {}
    named = [(f"input.{name}", given.input_image if name == "input_image" else extra.get(name))
             for name in AI_SDK_IMAGE_FIELDS]  # fmt: skip
    listed = [(f"input.images[{i}]", url) for i, url in enumerate(given.images or [])]
    found = listed + [(field, url) for field, url in named if url is not None]
    if len(found) > MAX_IMAGES:
        field = found[MAX_IMAGES][0]
        raise invalid(field, f"at most {MAX_IMAGES} reference images are taken here (FLUX.2 [klein] runs 4); "
                             "send fewer")  # fmt: skip
    for field, url in found:
        if not isinstance(url, str) or not url.startswith(("http://", "https://", "data:")):
            raise invalid(field, f"must be an http(s) URL or a data: URL, got {str(url)[:80]!r}")
    return found


async def _references(service: ImageService, http: Request, urls: list[tuple[str, str]]) -> list:
    """Each reference fetched, or read here when it is one of this server's files (a /v1/files urls.get)."""

    async def reference(field: str, url: str):
        file_id = own_file_id(service, http, url)
        if file_id is None:
            return await service.fetch_reference(url, field)
        return await service.uploads.image(file_id, owner_of(http), field)

    return list(await asyncio.gather(*(reference(field, url) for field, url in urls)))


def _to_request(served: ServedModel, given: ReplicateInput, images: list) -> GenerationRequest:
    fields = {
        f"input.{name}": getattr(given, name) for name in READS if getattr(given, name, None) is not None
    }
    width, height = _sides(given, images)
    choices = lora.loras(given)
    return to_request(served.spec, fields, FIELDS, images=images, width=width, height=height, loras=choices)


def _sides(given: ReplicateInput, images: list) -> tuple[int, int]:
    if given.size is not None:
        width, height = (int(side) for side in given.size.split("x"))
        return width, height
    return output_size(given.aspect_ratio, given.output_megapixels, images[0] if images else None)


def _recorded(fields: dict[str, Any]) -> dict[str, Any]:
    """The input as sent, each data: URL cut short (the job's record is not the place for image bytes)."""

    def short(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("data:") and len(value) > DATA_URL_KEPT:
            return f"{value[:DATA_URL_KEPT]}...({len(value)} characters)"
        if isinstance(value, list):
            return [short(v) for v in value]
        return value

    return {name: short(value) for name, value in fields.items()}


def prefer_wait(http: Request) -> float | None:
    """`Prefer: wait` (60 s) or `wait=N` (1..60): how long to block; None without it."""
    header = http.headers.get("prefer")
    if header is None:
        return None
    for part in (p.strip() for p in header.split(",")):
        if part == "wait":
            return 60.0
        if part.startswith("wait="):
            value = part[len("wait=") :]
            if not value.isdigit() or not 1 <= int(value) <= 60:
                raise ApiError(400, f"Prefer: {part} must be wait or wait=N with N from 1 to 60 seconds")
            return float(value)
    return None
