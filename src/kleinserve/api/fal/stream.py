"""fal streaming (`POST /{endpoint}/stream`, what fal_client.stream and @fal-ai/client's fal.stream call):
server-sent events while the job runs, each `data:` one JSON object.

    {"request_id", "status": "IN_PROGRESS", "step", "num_inference_steps", "progress", "seed",
     "images": [{"url": "data:image/jpeg;base64,...", "content_type", "width", "height"}]}  per step
    the endpoint's output JSON, exactly as the synchronous call returns it                      last
    {"request_id", "status": "ERROR", "status_code", "detail", "error_type"}            last, if it fails

The previews show the current estimate of the finished image at 1/8 of its size. Both clients take the
last event as the output (JS `stream.done()`). Bad input is refused before the stream starts, as a plain
HTTP error. A client that hangs up cancels the job.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

from kleinserve.api.errors import ApiError, from_service_error
from kleinserve.api.step_stream import KEEP_ALIVE, KEEP_ALIVE_EVENT, job_steps
from kleinserve.errors import KleinserveError
from kleinserve.imaging import CONTENT_TYPES, data_uri, encode_image
from kleinserve.service.outputs import Generated

PREVIEW_FORMAT = "jpeg"
PREVIEW_QUALITY = 80


async def events(
    job_id: str,
    seed: int,
    steps: asyncio.Queue,
    outcome: asyncio.Future[Generated],
    output: Callable[[Generated], Awaitable[dict]],
) -> AsyncIterator[str]:
    """`steps` receives (step, total, previews) tuples; `outcome` ends with the job."""
    try:
        async for step in job_steps(steps, outcome):
            yield KEEP_ALIVE_EVENT if step is KEEP_ALIVE else _event(await _progress(job_id, seed, *step))
        yield _event(await _last(job_id, outcome, output))
    finally:
        outcome.cancel()  # a no-op once done; otherwise the client left, and the job is cancelled


async def _progress(job_id: str, seed: int, step: int, total: int, previews: list) -> dict:
    encoded = await asyncio.gather(
        *(asyncio.to_thread(encode_image, picture, PREVIEW_FORMAT, PREVIEW_QUALITY) for picture in previews)
    )
    content_type = CONTENT_TYPES[PREVIEW_FORMAT]
    images = [
        {"url": await data_uri(data, content_type), "content_type": content_type,
         "width": picture.shape[1], "height": picture.shape[0]}
        for data, picture in zip(encoded, previews, strict=True)
    ]  # fmt: skip
    return {"request_id": job_id, "status": "IN_PROGRESS", "step": step, "num_inference_steps": total,
            "progress": round(step / total, 4), "seed": seed, "images": images}  # fmt: skip


async def _last(job_id: str, outcome: asyncio.Future, output) -> dict:
    try:
        return await output(outcome.result())
    except KleinserveError as exc:
        error = from_service_error(exc)
    except ApiError as exc:
        error = exc
    except Exception as exc:
        error = ApiError(500, f"internal error: {type(exc).__name__}; the server log has details")
    status, body = error.fal_body()
    return {"request_id": job_id, "status": "ERROR", "status_code": status, **body}


def _event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"
