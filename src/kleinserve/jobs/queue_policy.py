"""The queue's rules, written once for both backends: which jobs fill a batch after the oldest, what a lease
holds, what happens to a job whose lease expired (queued again or failed), a cancel, the callers' jobs a
restart fails, and a running job's steps (the contract: jobs/contract.py). `QueuePolicy` is the async face
of these rules and of the records' (records.py) that both stores inherit.

Each rule is a function of a `Database` (jobs/database.py) run inside the backend's transaction; the
backend's only part is running it there: `QueuePolicy._run` (on SQLite's one writer thread, or on a
PostgreSQL pool thread with that thread's connection). Rows a rule goes on to change are locked where the
backend locks rows (PostgreSQL: FOR UPDATE, SKIP LOCKED so concurrent workers never wait on each other).
Every write made under a lease names the lease, so a late write from a worker that lost it changes nothing.
"""

from __future__ import annotations

import time
import uuid

from kleinserve.job import Job, JobStatus, Progress, UsageEntry
from kleinserve.jobs.contract import Claim
from kleinserve.jobs.database import Database
from kleinserve.jobs.records import (
    JOB_COLUMNS,
    QUEUED,
    RUNNING,
    UNFINISHED,
    add,
    delete,
    depth,
    expired,
    finish,
    get,
    job_from_row,
    log,
    placeholders,
    recent,
)
from kleinserve.jobs.signals import CHANGED, CLAIMABLE, Signals

RELEASED = "the server stopped before this job finished; queued again"

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


# --- the queue ----------------------------------------------------------------------------------------


def claim(db: Database, model: str, max_images: int, lease_s: float, ready_before: float) -> Claim:
    order = f"ORDER BY created_at, {db.seq}"
    with db.transaction():
        first = db.execute(
            "SELECT batch_key, COALESCE(queued_at, created_at) FROM jobs WHERE model = ? AND status = ?"
            f" {order} LIMIT 1 {db.lock('skip')}",
            (model, QUEUED),
        ).fetchone()
        if first is None:
            return Claim(None, [])
        key, oldest = first
        rows = db.execute(  # the first job again (locked by us already), then its companions
            "SELECT id, num_images FROM jobs WHERE model = ? AND status = ? AND batch_key = ?"
            f" {order} LIMIT ? {db.lock('skip')}",
            (model, QUEUED, key, max(max_images, 1)),
        ).fetchall()
        ids, images = batch_after_oldest(rows, max_images)
        if images < max_images and oldest > ready_before:
            return Claim(None, [], ready_at=oldest)
        lease, now = uuid.uuid4().hex, time.time()
        db.execute(
            "UPDATE jobs SET status = ?, started_at = ?, attempts = attempts + 1, lease = ?,"
            f" lease_expires_at = ? WHERE id IN ({placeholders(ids)})",
            (RUNNING, now, lease, now + lease_s, *ids),
        )
        rows = db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id IN ({placeholders(ids)}) {order}", ids)
        jobs = [job_from_row(row, []) for row in rows.fetchall()]  # without logs: a worker needs none
        for job_id in ids:
            db.notify(CHANGED, job_id)
    return Claim(lease, jobs)


def batch_after_oldest(rows: list[tuple[str, int]], max_images: int) -> tuple[list[str], int]:
    """The ids that fill a batch from (id, images) rows, oldest first: the oldest job, then those after it
    while their images fit; and their images."""
    ids, images = [], 0
    for job_id, count in rows:
        if ids and images + count > max_images:
            break
        ids.append(job_id)
        images += count
    return ids, images


def inputs(db: Database, job_id: str) -> bytes | None:
    row = db.execute("SELECT data FROM job_inputs WHERE job_id = ?", (job_id,)).fetchone()
    return None if row is None else bytes(row[0])


def renew(db: Database, lease: str, lease_s: float, note: str | None) -> set[str]:
    with db.transaction():
        rows = db.execute(
            "UPDATE jobs SET lease_expires_at = ? WHERE lease = ? AND status = ? RETURNING id",
            (time.time() + lease_s, lease, RUNNING),
        ).fetchall()
        held = {row[0] for row in rows}
        if note:
            for job_id in sorted(held):
                log(db, job_id, note)
    return held


def release(db: Database, lease: str) -> list[str]:
    with db.transaction():
        ids = _ids(
            db,
            "SELECT id FROM jobs WHERE lease = ? AND status = ?"
            f" ORDER BY created_at, {db.seq} {db.lock('update')}",
            (lease, RUNNING),
        )
        for job_id in ids:
            _requeue(db, job_id, RELEASED, counted=False)
    return ids


def end(db: Database, job_id: str, status: JobStatus, result: dict | None, error: dict | None,
        lease: str | None, only_queued: bool, usage: UsageEntry | None) -> bool:
    """The job's end and its log line in one transaction: a job that ended has exactly one end line. An end
    under a lease is idempotent: the ended row keeps its lease, so a retry after a commit whose answer was
    lost (the database restarted) is told True again instead of taking the job for lost."""
    with db.transaction():
        if finish(db, job_id, status, result, error, lease, only_queued, usage):
            _log_end(db, job_id, status, error)
            return True
        if lease is None:
            return False
        sql = "SELECT 1 FROM jobs WHERE id = ? AND status = ? AND lease = ?"
        return db.execute(sql, (job_id, status.value, lease)).fetchone() is not None


def cancel(db: Database, job_id: str, error: dict) -> str | None:
    with db.transaction():
        row = db.execute(f"SELECT status FROM jobs WHERE id = ? {db.lock('update')}", (job_id,)).fetchone()
        if row is None:
            return None
        if row[0] not in UNFINISHED:
            return "finished"
        finish(db, job_id, JobStatus.CANCELLED, None, error)
        _log_end(db, job_id, JobStatus.CANCELLED, error)
    return "cancelled"


def requeue_expired(db: Database, before: float, max_attempts: int) -> tuple[list[str], list[str]]:
    requeued, failed = [], []
    with db.transaction():
        rows = db.execute(  # a lease being renewed right now is locked by its renewal: skipped
            "SELECT id, detached, attempts FROM jobs WHERE status = ? AND lease_expires_at < ?"
            f" ORDER BY created_at, {db.seq} {db.lock('skip')}",
            (RUNNING, before),
        ).fetchall()
        for job_id, detached, attempts in rows:
            if detached and attempts < max_attempts:
                message = (f"attempt {attempts} of {max_attempts} was interrupted (its worker stopped);"
                           " queued again")  # fmt: skip
                _requeue(db, job_id, message, counted=True)
                requeued.append(job_id)
            else:
                _fail(db, job_id, gave_up(attempts) if detached else INTERRUPTED)
                failed.append(job_id)
    return requeued, failed


def fail_waiting(db: Database) -> list[str]:
    """Queued jobs whose callers went with the last process (not detached) fail."""
    with db.transaction():
        ids = _ids(
            db,
            "SELECT id FROM jobs WHERE status = ? AND NOT detached"
            f" ORDER BY created_at, {db.seq} {db.lock('update')}",
            (QUEUED,),
        )
        for job_id in ids:
            _fail(db, job_id, INTERRUPTED)
    return ids


def _requeue(db: Database, job_id: str, message: str, *, counted: bool) -> None:
    """Back to the queue; the attempt the claim counted is taken back unless `counted`."""
    (model,) = db.execute(
        "UPDATE jobs SET status = ?, lease = NULL, lease_expires_at = NULL, attempts = attempts - ?"
        " WHERE id = ? RETURNING model",
        (QUEUED, 0 if counted else 1, job_id),
    ).fetchone()
    db.execute("DELETE FROM job_progress WHERE job_id = ?", (job_id,))
    log(db, job_id, message, "WARNING")
    db.notify(CLAIMABLE, model)


def _fail(db: Database, job_id: str, error: dict) -> None:
    finish(db, job_id, JobStatus.FAILED, None, error)
    _log_end(db, job_id, JobStatus.FAILED, error, "ERROR")


def _log_end(db: Database, job_id: str, status: JobStatus, error: dict | None, level: str = "INFO") -> None:
    """A job's end line: "succeeded", or "failed: why" / "cancelled: why"."""
    log(db, job_id, status.value if error is None else f"{status.value}: {error['message']}", level)


def position(db: Database, job_id: str) -> int | None:
    row = db.execute(
        f"SELECT model, created_at, {db.seq} FROM jobs WHERE id = ? AND status = ?", (job_id, QUEUED)
    ).fetchone()
    if row is None:
        return None
    return db.execute(
        f"SELECT COUNT(*) FROM jobs WHERE model = ? AND status = ? AND (created_at, {db.seq}) < (?, ?)",
        (row[0], QUEUED, row[1], row[2]),
    ).fetchone()[0]


# --- progress of running jobs -------------------------------------------------------------------------


def record_progress(
    db: Database, job_id: str, lease: str, step: int, total: int, previews: list[bytes]
) -> bool:
    with db.transaction():
        held = db.execute(  # locked: a concurrent end waits for this write, or this sees the end
            f"SELECT 1 FROM jobs WHERE id = ? AND lease = ? AND status = ? {db.lock('share')}",
            (job_id, lease, RUNNING),
        ).fetchone()
        if held is None:
            return False
        db.execute(
            f"INSERT INTO job_progress VALUES (?, ?, ?, {db.previews_param}, ?) ON CONFLICT (job_id)"
            " DO UPDATE SET step = excluded.step, total = excluded.total, previews = excluded.previews,"
            " at = excluded.at",
            (job_id, step, total, db.pack_previews(previews), time.time()),
        )
        db.notify(CHANGED, job_id)
    return True


def progress(db: Database, job_id: str) -> Progress | None:
    row = db.execute(
        "SELECT step, total, previews, at FROM job_progress WHERE job_id = ?", (job_id,)
    ).fetchone()
    return None if row is None else Progress(row[0], row[1], db.unpack_previews(row[2]), row[3])


def _ids(db: Database, sql: str, args: tuple) -> list[str]:
    return [row[0] for row in db.execute(sql, args).fetchall()]


class QueuePolicy:
    """The records, the queue and its signals as async calls, each running its rule above through the
    backend's `_run(rule, *args)`, which calls `rule(database, *args)` off the event loop."""

    _signals: Signals  # the backend's: notified by its Database, waited on here

    async def _run(self, rule, *args): ...

    async def add(self, job: Job, inputs: bytes, *, max_queued: int | None = None) -> bool:
        return await self._run(add, job, inputs, max_queued)

    async def get(self, job_id: str) -> Job | None:
        return await self._run(get, job_id)

    async def recent(self, owner: str | None, status: JobStatus | None = None, limit: int = 100) -> list[Job]:
        return await self._run(recent, owner, status, limit)

    async def log(self, job_id: str, message: str, level: str = "INFO") -> None:
        await self._run(log, job_id, message, level)

    async def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        result: dict | None = None,
        error: dict | None = None,
        lease: str | None = None,
        only_queued: bool = False,
        usage: UsageEntry | None = None,
    ) -> bool:
        return await self._run(end, job_id, status, result, error, lease, only_queued, usage)

    async def expired(self, before: float) -> list[Job]:
        return await self._run(expired, before)

    async def delete(self, job_ids: list[str]) -> None:
        await self._run(delete, job_ids)

    async def claim(self, model: str, *, max_images: int, lease_s: float, ready_before: float) -> Claim:
        return await self._run(claim, model, max_images, lease_s, ready_before)

    async def inputs(self, job_id: str) -> bytes | None:
        return await self._run(inputs, job_id)

    async def renew(self, lease: str, lease_s: float, note: str | None = None) -> set[str]:
        return await self._run(renew, lease, lease_s, note)

    async def release(self, lease: str) -> list[str]:
        return await self._run(release, lease)

    async def cancel(self, job_id: str, error: dict) -> str | None:
        return await self._run(cancel, job_id, error)

    async def requeue_expired(self, before: float, max_attempts: int) -> tuple[list[str], list[str]]:
        return await self._run(requeue_expired, before, max_attempts)

    async def fail_waiting(self) -> list[str]:
        return await self._run(fail_waiting)

    async def queue_depth(self, model: str) -> int:
        return await self._run(depth, model)

    async def queue_position(self, job_id: str) -> int | None:
        return await self._run(position, job_id)

    async def record_progress(
        self, job_id: str, lease: str, step: int, total: int, previews: list[bytes]
    ) -> bool:
        return await self._run(record_progress, job_id, lease, step, total, previews)

    async def progress(self, job_id: str) -> Progress | None:
        return await self._run(progress, job_id)

    async def wait_queued(self, model: str, timeout: float) -> None:
        await self._signals.wait(CLAIMABLE, model, timeout)

    async def wait_changed(self, job_id: str, timeout: float) -> None:
        await self._signals.wait(CHANGED, job_id, timeout)
