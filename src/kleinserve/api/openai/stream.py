"""OpenAI image streaming (`stream: true` on /v1/images/generations and /v1/images/edits): server-sent
events in OpenAI's shapes, each an `event: <type>` line and a `data: <json>` line, as OpenAI sends them.

    {"type": "image_generation.partial_image", "b64_json", "created_at", "size", "quality", "background",
     "output_format", "partial_image_index"}     `partial_images` per image, from the step previews
    {"type": "image_generation.completed", "b64_json", "created_at", "size", "quality", "background",
     "output_format", "usage"}                   one per image, last (the request's usage on each)
    {"type": "error", "error": {"message", "type", "param", "code"}}     last, if the job fails

Edits say `image_edit.` instead of `image_generation.`. A partial image is the step's preview (the current
estimate of the finished image) scaled up to the image's size, in the requested format; the steps are
spread evenly over the denoising, the last one before the final step. A client that hangs up cancels its
own job, nothing else.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from kleinserve.api.dialect_response import image_base64
from kleinserve.api.errors import ApiError, from_service_error
from kleinserve.api.step_stream import KEEP_ALIVE, KEEP_ALIVE_EVENT, job_steps
from kleinserve.errors import KleinserveError
from kleinserve.imaging import base64_text, encode_image
from kleinserve.service.outputs import Generated

__all__ = ["Shape", "events", "partial_steps"]


@dataclass(frozen=True)
class Shape:
    """What every event of one stream repeats."""

    kind: str  # "image_generation" or "image_edit"
    quality: str
    output_format: str
    compression: int | None  # jpeg / webp quality
    width: int
    height: int

    def fields(self, width: int, height: int) -> dict:
        return {
            "created_at": int(time.time()),
            "size": f"{width}x{height}",
            "quality": self.quality,
            "background": "opaque",  # FLUX.2 [klein] has no alpha
            "output_format": self.output_format,
        }


def partial_steps(count: int, total: int) -> list[int]:
    """`count` distinct steps of 1..total-1 (fewer when there are not as many), evenly spread."""
    picked = {round(total * (i + 1) / (count + 1)) for i in range(count)}
    return sorted(step for step in picked if 1 <= step < total)


async def events(
    shape: Shape, partials: int, steps: asyncio.Queue, outcome: asyncio.Future[Generated]
) -> AsyncIterator[str]:
    """`steps` receives (step, total, previews) tuples; `outcome` ends with the job."""
    try:
        async for step in job_steps(steps, outcome):
            if step is KEEP_ALIVE:
                yield KEEP_ALIVE_EVENT
                continue
            for event in await _partials(shape, partials, *step):
                yield event
        for event in await _last(shape, outcome):
            yield event
    finally:
        outcome.cancel()  # a no-op once done; otherwise the client left, and its job is cancelled


async def _partials(shape: Shape, partials: int, step: int, total: int, previews: list) -> list[str]:
    picked = partial_steps(partials, total)
    if step not in picked:
        return []
    encoded = await asyncio.gather(*(asyncio.to_thread(_partial_image, shape, p) for p in previews))
    fields = shape.fields(shape.width, shape.height)
    return [
        _event({"type": f"{shape.kind}.partial_image", "b64_json": await base64_text(data), **fields,
                "partial_image_index": picked.index(step)})
        for data in encoded
    ]  # fmt: skip


def _partial_image(shape: Shape, preview: np.ndarray) -> bytes:
    picture = Image.fromarray(preview).resize((shape.width, shape.height), Image.Resampling.BILINEAR)
    return encode_image(picture, shape.output_format, shape.compression)


async def _last(shape: Shape, outcome: asyncio.Future) -> list[str]:
    try:
        return await _completed(shape, outcome.result())
    except KleinserveError as exc:
        error = from_service_error(exc)
    except ApiError as exc:
        error = exc
    except Exception as exc:
        error = ApiError(500, f"internal error: {type(exc).__name__}; the server log has details")
    return [_event({"type": "error", **error.body()})]


async def _completed(shape: Shape, generated: Generated) -> list[str]:
    usage = generated.usage.openai() if generated.usage else _NO_USAGE
    return [
        _event({"type": f"{shape.kind}.completed", "b64_json": await image_base64(image),
                **shape.fields(image.width, image.height), "usage": usage})
        for image in generated.images
    ]  # fmt: skip


_NO_USAGE = {
    "input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
    "input_tokens_details": {"text_tokens": 0, "image_tokens": 0},
}  # fmt: skip


def _event(data: dict) -> str:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n"
