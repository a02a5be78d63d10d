"""A job as a table row: the columns every store's `jobs` table shares and the conversion back to a Job;
and the errors the queue records on jobs that can no longer run."""

from __future__ import annotations

import json

from kleinserve.job import Job, JobStatus

# A job row's columns, in the order `job_from_row` reads them (the same in every store's schema).
JOB_COLUMNS = (
    "id, model, status, created_at, started_at, finished_at, params, result, error, owner, batch_key,"
    " num_images, detached, attempts"
)


def job_from_row(row: tuple, logs: list[tuple]) -> Job:
    """A Job from a row of JOB_COLUMNS (params, result and error as JSON text) and its (time, level,
    message) log rows."""
    (job_id, model, status, created, started, finished, params, result, error, owner, key, images,
     detached, tries) = row  # fmt: skip
    return Job(
        id=job_id,
        model=model,
        params=json.loads(params),
        status=JobStatus(status),
        created_at=created,
        started_at=started,
        finished_at=finished,
        result=json.loads(result) if result else None,
        error=json.loads(error) if error else None,
        logs=[{"timestamp": t, "level": level, "message": message} for t, level, message in logs],
        owner=owner,
        batch_key=key,
        num_images=images,
        detached=bool(detached),
        attempts=tries,
    )


# What a job that can no longer run records as its error.
INTERRUPTED = {
    "type": "server_error",
    "message": "the server stopped before this job finished and nobody waits for it any more; "
    "nothing was produced, submit it again",
    "param": None,
}


def gave_up(attempts: int) -> dict:
    return {
        "type": "server_error",
        "message": f"the worker running this job stopped during each of its {attempts} attempts;"
        " giving up, submit it again",
        "param": None,
    }
