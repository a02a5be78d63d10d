"""fal's output JSON for a finished generation: the synchronous answer, a queue result, a webhook's payload
and a stream's last event are all this one shape."""

from __future__ import annotations

from kleinserve.api.dialect_response import image_url, rounded_timings
from kleinserve.api.errors import ApiError
from kleinserve.imaging import extension_of
from kleinserve.job import Job, JobStatus
from kleinserve.request import ENGINE_STAGES
from kleinserve.service.facade import ImageService
from kleinserve.service.outputs import Generated, OutputImage

REQUEST_ID_HEADER = "x-fal-request-id"


async def output(service: ImageService, generated: Generated, prompt: str, base_url: str) -> dict:
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


async def finished_output(service: ImageService, job: Job, base_url: str) -> dict:
    """A queued job's output, or the error it ended with (a 400 while it has not ended)."""
    if not job.status.finished:
        raise ApiError(400, f"request {job.id} is still {job.status.value}; poll its status_url",
                       code="request_in_progress")  # fmt: skip
    if job.status is JobStatus.CANCELLED:
        raise ApiError(
            400, f"request {job.id} was cancelled: {job.error['message']}", code="request_cancelled"
        )
    if job.status is JobStatus.FAILED:
        raise ApiError(500, job.error["message"], code="generation_failed")
    return await output(service, await service.result(job), job.params["prompt"], base_url)


def inference_time(timings: dict[str, float]) -> float:
    return round(sum(timings.get(stage, 0.0) for stage in ENGINE_STAGES), 4)


def _file_name(image: OutputImage, index: int) -> str:
    """A stored image's file name; an inline image is named by its place."""
    if image.key is not None:
        return image.key.rsplit("/", 1)[-1]
    return f"{index}.{extension_of(image.content_type)}"
