"""A BFL task's state as get_result answers it (and its webhook carries): Pending, Ready with
`result.sample`, Error, or Content Moderated when the safety checker flagged the image."""

from __future__ import annotations

from kleinserve.api.dialect_response import image_url
from kleinserve.job import Job, JobStatus
from kleinserve.service.facade import ImageService


async def task_status(service: ImageService, job: Job, base_url: str) -> dict:
    answer = {"id": job.id, "result": None, "progress": None, "details": None}
    if not job.status.finished:
        return {**answer, "status": "Pending"}
    if job.status is not JobStatus.SUCCEEDED:
        return {**answer, "status": "Error", "details": {"error": job.error["message"]}}
    generated = await service.result(job)
    image = generated.images[0]
    if image.nsfw:
        flagged = {"moderation": "flagged by the safety checker"}
        return {**answer, "status": "Content Moderated", "details": flagged}
    sample = {"sample": await image_url(service, image, base_url), "seed": generated.seed,
              "prompt": job.params.get("prompt"), "start_time": job.started_at, "end_time": job.finished_at,
              "duration": _duration(job)}  # fmt: skip
    return {**answer, "status": "Ready", "result": sample}


def _duration(job: Job) -> float | None:
    if job.started_at is None or job.finished_at is None:
        return None
    return round(job.finished_at - job.started_at, 4)
