"""What every dialect does on the way out: output images as stored URLs, data URIs or base64; the headers a
generation answers with (its request id, its job id, the demo model's warning); the demo warning in
model listings."""

from __future__ import annotations

from kleinserve.imaging import base64_text, data_uri
from kleinserve.service.facade import ImageService
from kleinserve.service.outputs import OutputImage
from kleinserve.service.served_models import DEMO_LABEL, ServedModel

JOB_ID_HEADER = "x-kleinserve-job-id"
WARNING_HEADER = "x-kleinserve-warning"


async def image_url(service: ImageService, image: OutputImage, base_url: str) -> str:
    """A stored image's URL; an image never stored (sync_mode, b64_json, or flagged by the safety checker:
    then a black image) comes inline, as a data URI."""
    if image.key is not None:
        return service.file_url(image.key, base_url)
    return await data_uri(image.data, image.content_type)


async def image_base64(image: OutputImage) -> str:
    return await base64_text(image.data)


def rounded_timings(timings: dict[str, float]) -> dict[str, float]:
    return {stage: round(seconds, 4) for stage, seconds in timings.items()}


def generation_headers(served: ServedModel, job_id: str, request_id_header: str) -> dict[str, str]:
    """A generation's response headers: the job id as the dialect's request id (`x-request-id`,
    `x-fal-request-id`) and as x-kleinserve-job-id, and a warning when the demo model made it."""
    headers = {request_id_header: job_id, JOB_ID_HEADER: job_id}
    if served.demo:
        headers[WARNING_HEADER] = DEMO_LABEL
    return headers


def demo_warning(served: ServedModel) -> dict[str, str]:
    """`{"warning": ...}` for the demo model, to merge into what describes a model; else nothing."""
    return {"warning": DEMO_LABEL} if served.demo else {}
