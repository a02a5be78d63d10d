"""A job as Replicate's prediction object: what every Replicate route, stream and webhook shows.

    {id, model, version, input, logs, output, data_removed, error, status, source, created_at, started_at,
     completed_at, metrics: {predict_time, total_time}, urls: {get, cancel, stream, web}}

Statuses: a queued job is "starting", a running one "processing", then "succeeded" | "failed" | "canceled".
`logs` carry the job's log lines and one tqdm-style line per denoising step (` 50%|█████     | 2/4
[00:01<00:01,  1.95it/s]`), which replicate-python's Prediction.progress parses.
"""

from __future__ import annotations

from datetime import UTC, datetime

from kleinserve.api.dialect_response import image_url
from kleinserve.errors import ResultGone
from kleinserve.job import Job, JobStatus
from kleinserve.service.facade import ImageService

STATUSES = {JobStatus.QUEUED: "starting", JobStatus.RUNNING: "processing", JobStatus.SUCCEEDED: "succeeded",
            JobStatus.FAILED: "failed", JobStatus.CANCELLED: "canceled"}  # fmt: skip
BAR_WIDTH = 10


async def prediction(service: ImageService, job: Job, *, blocked_out: bool = False) -> dict:
    """The prediction for `job`. `blocked_out`: a `Prefer: wait` that ended before the job did, which
    Replicate answers as "starting" whatever the job is doing, so that both official clients' run() go
    on polling (they take any other status as final)."""
    base = job.params["base_url"].rstrip("/")
    status = "starting" if blocked_out and not job.status.finished else STATUSES[job.status]
    return {
        "id": job.id, "model": job.params["model"], "version": job.params["version"],
        "input": job.params["input"], "logs": await logs(service, job), "output": await _output(service, job),
        "data_removed": False, "error": _error(job), "status": status, "source": "api",
        "created_at": _time(job.created_at), "started_at": _time(job.started_at),
        "completed_at": _time(job.finished_at), "metrics": _metrics(job),
        "urls": {"get": f"{base}/v1/predictions/{job.id}", "cancel": f"{base}/v1/predictions/{job.id}/cancel",
                 "stream": f"{base}/v1/streams/{job.id}", "web": f"{base}/v1/predictions/{job.id}"},
    }  # fmt: skip


async def logs(service: ImageService, job: Job) -> str:
    """The job's log messages, then a tqdm line per step done (all of them once it succeeded)."""
    lines = [entry["message"] for entry in job.logs]
    total = job.params.get("steps") or 0
    if job.status is JobStatus.SUCCEEDED:
        done = total
    elif job.status is JobStatus.RUNNING:
        progress = await service.progress(job.id)
        done, total = (progress.step, progress.total) if progress else (0, total)
    else:
        done = 0
    if job.started_at is not None and total:
        ended = job.finished_at or datetime.now(UTC).timestamp()
        rate = done / max(ended - job.started_at, 1e-6) if done else 0.0
        lines += [tqdm_line(step, total, rate) for step in range(done + 1)]
    return "\n".join(lines) + ("\n" if lines else "")


def tqdm_line(step: int, total: int, rate: float) -> str:
    """tqdm's default bar: ` 50%|█████     | 2/4 [00:01<00:01,  1.95it/s]` at `rate` steps per second."""
    filled = BAR_WIDTH * step // total
    bar = "█" * filled + " " * (BAR_WIDTH - filled)
    elapsed = step / rate if rate else 0.0
    remaining = (total - step) / rate if rate else 0.0
    speed = f"{rate:5.2f}it/s" if rate else "?it/s"
    return f"{100 * step // total:3d}%|{bar}| {step}/{total} [{_clock(elapsed)}<{_clock(remaining)}, {speed}]"


def _clock(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes:02d}:{rest:02d}"


async def _output(service: ImageService, job: Job) -> list[str] | None:
    if job.status is not JobStatus.SUCCEEDED:
        return None
    try:
        generated = await service.result(job)
    except ResultGone:
        return None
    return [await image_url(service, image, job.params["base_url"]) for image in generated.images]


def _error(job: Job) -> str | None:
    if job.status is JobStatus.FAILED:
        return (job.error or {}).get("message", "the prediction failed")
    return None


def _metrics(job: Job) -> dict:
    metrics: dict = {}
    if job.started_at is not None and job.finished_at is not None:
        metrics["predict_time"] = round(job.finished_at - job.started_at, 4)
    if job.finished_at is not None:
        metrics["total_time"] = round(job.finished_at - job.created_at, 4)
    return metrics


def _time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")
