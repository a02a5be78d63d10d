"""A job's record in the database, for both backends: the `jobs` table's columns (params, result and error
as JSON text) and their conversion to and from a Job; and the record's operations: add (with its inputs),
read, log, end (with its usage entry), and retention. The queue's rules on those records are
queue_policy.py's; each function here is a function of the backend's `Database` (jobs/database.py)."""

from __future__ import annotations

import json
import time

from kleinserve.job import Job, JobStatus, UsageEntry
from kleinserve.jobs.database import Database
from kleinserve.jobs.signals import CHANGED, CLAIMABLE

QUEUED, RUNNING = JobStatus.QUEUED.value, JobStatus.RUNNING.value
UNFINISHED = (QUEUED, RUNNING)

# A job row's columns, in the order `job_from_row` reads them (the same in every store's schema).
JOB_COLUMNS = (
    "id, model, status, created_at, started_at, finished_at, params, result, error, owner, batch_key,"
    " num_images, detached, attempts"
)


def job_values(job: Job) -> tuple:
    """The job's values for JOB_COLUMNS, in their order."""
    return (job.id, job.model, job.status.value, job.created_at, job.started_at, job.finished_at,
            json.dumps(job.params), dump(job.result), dump(job.error), job.owner, job.batch_key,
            job.num_images, job.detached, job.attempts)  # fmt: skip


def job_from_row(row: tuple, logs: list[tuple]) -> Job:
    """A Job from a row of JOB_COLUMNS and its (time, level, message) log rows."""
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


def dump(value: dict | None) -> str | None:
    """A JSON column's text (None stays NULL)."""
    return None if value is None else json.dumps(value)


def placeholders(values: tuple | list) -> str:
    return ", ".join("?" * len(values))


def add(db: Database, job: Job, inputs: bytes, max_queued: int | None) -> bool:
    with db.transaction():
        if max_queued is not None:
            db.serialize(f"kleinserve add {job.model}")  # two servers cannot both pass the check below
            if depth(db, job.model) >= max_queued:
                return False
        db.executemany(
            "INSERT INTO job_logs (job_id, timestamp, level, message) VALUES (?, ?, ?, ?)",
            [(job.id, e["timestamp"], e["level"], e["message"]) for e in job.logs],
        )
        db.execute(
            f"INSERT INTO jobs ({JOB_COLUMNS}, queued_at) VALUES ({placeholders(range(15))})",
            (*job_values(job), time.time()),
        )
        db.execute("INSERT INTO job_inputs VALUES (?, ?)", (job.id, inputs))
        if job.webhook:
            held = time.time() + job.webhook_held_s if job.webhook_held_s else None
            db.execute(
                "INSERT INTO webhooks (job_id, url, lease_expires_at) VALUES (?, ?, ?)",
                (job.id, job.webhook, held),
            )
        db.notify(CLAIMABLE, job.model)
    return True


def get(db: Database, job_id: str) -> Job | None:
    row = db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        return None
    logs = db.execute(
        f"SELECT timestamp, level, message FROM job_logs WHERE job_id = ? ORDER BY {db.seq}", (job_id,)
    ).fetchall()
    return job_from_row(row, logs)


def recent(db: Database, owner: str | None, status: JobStatus | None, limit: int) -> list[Job]:
    where, args = ["owner IS NULL" if owner is None else "owner = ?"], [] if owner is None else [owner]
    if status is not None:
        where.append("status = ?")
        args.append(status.value)
    rows = db.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)}"
        f" ORDER BY created_at DESC, {db.seq} DESC LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [job_from_row(row, []) for row in rows]


def log(db: Database, job_id: str, message: str, level: str = "INFO") -> None:
    with db.transaction():
        db.execute(
            "INSERT INTO job_logs (job_id, timestamp, level, message) VALUES (?, ?, ?, ?)",
            (job_id, time.time(), level, message),
        )
        db.notify(CHANGED, job_id)


def finish(
    db: Database,
    job_id: str,
    status: JobStatus,
    result: dict | None,
    error: dict | None,
    lease: str | None = None,
    only_queued: bool = False,
    usage: UsageEntry | None = None,
) -> bool:
    statuses = (QUEUED,) if only_queued else UNFINISHED
    held, lease_args = (" AND lease = ?", (lease,)) if lease is not None else ("", ())
    with db.transaction():
        changed = db.execute(
            "UPDATE jobs SET status = ?, finished_at = ?, result = ?, error = ?, lease = ?"
            f" WHERE id = ? AND status IN ({placeholders(statuses)}){held}",
            (status.value, time.time(), dump(result), dump(error), lease, job_id, *statuses, *lease_args),
        ).rowcount
        if changed:
            db.execute("DELETE FROM job_inputs WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM job_progress WHERE job_id = ?", (job_id,))
            db.notify(CHANGED, job_id)
        if changed and usage is not None:
            db.execute(
                "INSERT INTO usage_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (usage.job_id, usage.owner, usage.model, usage.finished_at, usage.images,
                 usage.megapixels, usage.engine_seconds, usage.cost_usd),
            )  # fmt: skip
    return bool(changed)


def expired(db: Database, before: float) -> list[Job]:
    db.execute("DELETE FROM inline_images WHERE keep_until <= ?", (time.time(),))
    rows = db.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE created_at < ? AND status NOT IN (?, ?)"
        f" ORDER BY created_at, {db.seq}",
        (before, *UNFINISHED),
    ).fetchall()
    return [job_from_row(row, []) for row in rows]


def delete(db: Database, job_ids: list[str]) -> None:
    with db.transaction():
        for table in ("job_logs", "job_inputs", "inline_images", "job_progress", "webhooks"):
            db.executemany(f"DELETE FROM {table} WHERE job_id = ?", [(job_id,) for job_id in job_ids])
        db.executemany("DELETE FROM jobs WHERE id = ?", [(job_id,) for job_id in job_ids])


def depth(db: Database, model: str) -> int:
    query = "SELECT COUNT(*) FROM jobs WHERE model = ? AND status = ?"
    return db.execute(query, (model, QUEUED)).fetchone()[0]
