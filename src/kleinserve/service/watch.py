"""A job's progress and end across processes (scaled out: the API server a caller waits on is not the worker
that runs the job).

The worker records each denoising step in the job store (`ProgressRecorder`), with small JPEG previews for
jobs whose submitter asked for them (params["previews"]: a streamed request). The API server follows the
job (`follow`): it waits on the store's change signal, re-reads the job after every wake (a wait may end
early or spuriously), hands new steps to the caller's step listener, and returns the final record, which
`outcome_of` turns into what the caller gets: the job's `Outcome` (outcome.py).
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable

import numpy as np
from PIL import Image

from kleinserve.errors import DatabaseUnavailable, ResultGone
from kleinserve.imaging import encode_image
from kleinserve.job import Job, JobStatus
from kleinserve.jobs.contract import JobStore
from kleinserve.service.outcome import RESULT_GONE, JobError, Outcome
from kleinserve.service.outputs import Outputs
from kleinserve.service.waiters import StepListener

log = logging.getLogger("kleinserve")

PREVIEW_FORMAT, PREVIEW_QUALITY = "jpeg", 80
FOLLOW_POLL_S = 1.0  # a backstop: the store's change signal wakes a follower at once


class ProgressRecorder:
    """Worker side: each step of each running job into the store (later steps replace earlier ones)."""

    def __init__(self, jobs: JobStore):
        self.jobs = jobs

    async def record(self, job_id: str, lease: str, step: int, total: int, previews: list) -> bool:
        """False when the lease no longer holds the job (cancelled or requeued): its batch may stop.
        `previews`: HxWx3 uint8 pictures, stored as JPEG."""
        encoded = await asyncio.gather(
            *(asyncio.to_thread(encode_image, p, PREVIEW_FORMAT, PREVIEW_QUALITY) for p in previews)
        )
        try:
            return await self.jobs.record_progress(job_id, lease, step, total, list(encoded))
        except Exception as exc:  # e.g. the database is briefly away: the next step tries again
            log.warning("could not record the progress of job %s: %s", job_id, exc)
            return True


async def follow(
    jobs: JobStore, job_id: str, on_step: StepListener | None, waited: Callable[[], bool]
) -> Job | None:
    """Until the job ends: its new steps go to `on_step`; returns its final record (None if it was deleted
    or nobody here waits for it any more)."""
    last_step = 0
    while waited():
        try:
            job, last_step = await _look(jobs, job_id, on_step, last_step)
        except DatabaseUnavailable:  # the job goes on meanwhile (or waits in the queue): look again
            job = None
        else:
            if job is None or job.status.finished:
                return job
        waiting = asyncio.ensure_future(jobs.wait_changed(job_id, FOLLOW_POLL_S))
        try:  # not awaited directly: a cancel must reach this loop even as the wait ends (Python 3.11)
            await asyncio.wait({waiting})
        finally:
            waiting.cancel()
    return None


async def _look(
    jobs: JobStore, job_id: str, on_step: StepListener | None, last_step: int
) -> tuple[Job | None, int]:
    """The job's record and its last step told to `on_step` (its new steps told now)."""
    if on_step is not None:
        progress = await jobs.progress(job_id)
        if progress is not None and progress.step > last_step:
            last_step = progress.step
            pictures = await asyncio.gather(*(asyncio.to_thread(_decode, d) for d in progress.previews))
            on_step(progress.step, progress.total, list(pictures))
    return await jobs.get(job_id), last_step


async def outcome_of(job: Job | None, outputs: Outputs) -> Outcome:
    """What a waiting caller gets for a job's final record: its images, or the error it ended with."""
    if job is None:
        return Outcome.failed("the job's record is gone (expired); submit it again")
    if job.status is JobStatus.SUCCEEDED:
        try:
            return Outcome(await outputs.rebuild(job))
        except ResultGone as exc:
            return Outcome.failed(str(exc), RESULT_GONE)
        except Exception as exc:
            log.error("could not read the images of job %s", job.id, exc_info=exc)
            return Outcome.failed(
                f"could not read the job's images ({type(exc).__name__}); the server log has details"
            )
    return Outcome(error=JobError.from_record(job.error, job.status.value))


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
