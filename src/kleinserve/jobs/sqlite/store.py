"""The embedded job store: one SQLite file under the data directory (see jobs.py for the contract).

Its calls run on one dedicated thread so the event loop never waits on disk. While it is open it holds
an exclusive lock on the data directory: two servers there would run each other's jobs, and being
alone is what lets a restart treat every running lease it finds as dead.

Here: the records and the queue (past 400 lines because that is half the JobStore contract, each call a
thin async wrapper over its body on the store's thread); the tables beside the queue (inline results,
usage, samples, workers, webhooks) are sqlite_side_tables.py's; the schema is sqlite_schema.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import sqlite3
import struct
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kleinserve.errors import KleinserveError
from kleinserve.job import Job, JobStatus, Progress, UsageEntry
from kleinserve.jobs.contract import Claim
from kleinserve.jobs.records import INTERRUPTED, JOB_COLUMNS, gave_up, job_from_row
from kleinserve.jobs.signals import CHANGED, CLAIMABLE, Signals
from kleinserve.jobs.sqlite.schema import create_schema
from kleinserve.jobs.sqlite.side_tables import SQLiteSideTables

QUEUED, RUNNING = JobStatus.QUEUED.value, JobStatus.RUNNING.value
_UNFINISHED = (QUEUED, RUNNING)


class DataDirInUse(KleinserveError):
    """Another server already uses this job database."""


class SQLiteJobStore(SQLiteSideTables):
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _exclusive_lock(path.with_name(path.name + ".lock"))
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kleinserve-jobs")
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")  # readers never wait on the writer
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes, fast
        create_schema(self._db)
        self._signals = Signals()  # within this process: the data-dir lock makes it the only one

    async def _run(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    # --- records ---------------------------------------------------------------------------------

    async def add(self, job: Job, inputs: bytes, *, max_queued: int | None = None) -> bool:
        return await self._run(self._add, job, inputs, max_queued)

    def _add(self, job: Job, inputs: bytes, max_queued: int | None) -> bool:
        with self._transaction():
            if max_queued is not None and self._depth(job.model) >= max_queued:
                return False
            self._db.executemany(
                "INSERT INTO job_logs VALUES (?, ?, ?, ?)",
                [(job.id, e["timestamp"], e["level"], e["message"]) for e in job.logs],
            )
            self._db.execute(
                f"INSERT INTO jobs ({JOB_COLUMNS}, queued_at) VALUES ({', '.join('?' * 15)})",
                (
                    job.id,
                    job.model,
                    job.status.value,
                    job.created_at,
                    job.started_at,
                    job.finished_at,
                    json.dumps(job.params),
                    _dump(job.result),
                    _dump(job.error),
                    job.owner,
                    job.batch_key,
                    job.num_images,
                    int(job.detached),
                    job.attempts,
                    time.time(),
                ),
            )
            self._db.execute("INSERT INTO job_inputs VALUES (?, ?)", (job.id, inputs))
            if job.webhook:
                self._db.execute("INSERT INTO webhooks (job_id, url) VALUES (?, ?)", (job.id, job.webhook))
        self._signals.notify(CLAIMABLE, job.model)
        return True

    async def get(self, job_id: str) -> Job | None:
        return await self._run(self._get, job_id)

    def _get(self, job_id: str) -> Job | None:
        row = self._db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        logs = self._db.execute(
            "SELECT timestamp, level, message FROM job_logs WHERE job_id = ? ORDER BY rowid", (job_id,)
        ).fetchall()
        return job_from_row(row, logs)

    async def recent(self, owner: str | None, status: JobStatus | None = None, limit: int = 100) -> list[Job]:
        return await self._run(self._recent, owner, status, limit)

    def _recent(self, owner: str | None, status: JobStatus | None, limit: int) -> list[Job]:
        rows = self._db.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE owner IS ? AND (? IS NULL OR status = ?)"
            " ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (owner, status and status.value, status and status.value, limit),
        ).fetchall()
        return [job_from_row(row, []) for row in rows]

    async def log(self, job_id: str, message: str, level: str = "INFO") -> None:
        await self._run(self._log, job_id, message, level)

    def _log(self, job_id: str, message: str, level: str = "INFO") -> None:
        self._db.execute("INSERT INTO job_logs VALUES (?, ?, ?, ?)", (job_id, time.time(), level, message))
        self._signals.notify(CHANGED, job_id)

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
        return await self._run(self._finish, job_id, status, result, error, lease, only_queued, usage)

    def _finish(self, job_id, status, result, error, lease, only_queued, usage=None) -> bool:
        held = " AND lease = ?" if lease is not None else ""
        statuses = (QUEUED, QUEUED) if only_queued else _UNFINISHED
        with self._transaction():
            changed = self._db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, result = ?, error = ?, lease = NULL"
                f" WHERE id = ? AND status IN (?, ?){held}",
                (status.value, time.time(), _dump(result), _dump(error), job_id, *statuses)
                + ((lease,) if lease is not None else ()),
            ).rowcount
            if changed:
                self._db.execute("DELETE FROM job_inputs WHERE job_id = ?", (job_id,))
                self._db.execute("DELETE FROM job_progress WHERE job_id = ?", (job_id,))
                self._signals.notify(CHANGED, job_id)  # waiters read on this thread: after the commit
            if changed and usage is not None:
                self._db.execute(
                    "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (usage.job_id, usage.owner, usage.model, usage.finished_at, usage.images,
                     usage.megapixels, usage.engine_seconds, usage.cost_usd),
                )  # fmt: skip
        return bool(changed)

    # --- the queue -------------------------------------------------------------------------------

    async def claim(self, model: str, *, max_images: int, lease_s: float, ready_before: float) -> Claim:
        return await self._run(self._claim, model, max_images, lease_s, ready_before)

    def _claim(self, model: str, max_images: int, lease_s: float, ready_before: float) -> Claim:
        with self._transaction():
            first = self._db.execute(
                "SELECT batch_key, COALESCE(queued_at, created_at) FROM jobs WHERE model = ? AND status = ?"
                " ORDER BY created_at, rowid LIMIT 1",
                (model, QUEUED),
            ).fetchone()
            if first is None:
                return Claim(None, [])
            key, oldest = first
            rows = self._db.execute(
                "SELECT id, num_images FROM jobs WHERE model = ? AND status = ? AND batch_key = ?"
                " ORDER BY created_at, rowid",
                (model, QUEUED, key),
            ).fetchall()
            ids, images = [], 0
            for job_id, count in rows:
                if ids and images + count > max_images:
                    break
                ids.append(job_id)
                images += count
            if images < max_images and oldest > ready_before:
                return Claim(None, [], ready_at=oldest)
            lease, now = uuid.uuid4().hex, time.time()
            for job_id in ids:
                self._db.execute(
                    "UPDATE jobs SET status = ?, started_at = ?, attempts = attempts + 1, lease = ?,"
                    " lease_expires_at = ? WHERE id = ?",
                    (RUNNING, now, lease, now + lease_s, job_id),
                )
            rows = self._db.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE id IN ({', '.join('?' * len(ids))})"
                " ORDER BY created_at, rowid",
                ids,
            ).fetchall()
        for job_id in ids:
            self._signals.notify(CHANGED, job_id)
        return Claim(lease, [job_from_row(row, []) for row in rows])  # without logs: a worker needs none

    async def inputs(self, job_id: str) -> bytes | None:
        return await self._run(self._inputs, job_id)

    def _inputs(self, job_id: str) -> bytes | None:
        row = self._db.execute("SELECT data FROM job_inputs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else bytes(row[0])

    async def renew(self, lease: str, lease_s: float) -> set[str]:
        return await self._run(self._renew, lease, lease_s)

    def _renew(self, lease: str, lease_s: float) -> set[str]:
        with self._transaction():
            self._db.execute(
                "UPDATE jobs SET lease_expires_at = ? WHERE lease = ? AND status = ?",
                (time.time() + lease_s, lease, RUNNING),
            )
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE lease = ? AND status = ?", (lease, RUNNING)
            ).fetchall()
        return {row[0] for row in rows}

    async def release(self, lease: str) -> list[str]:
        return await self._run(self._release, lease)

    def _release(self, lease: str) -> list[str]:
        with self._transaction():
            ids = self._ids("SELECT id FROM jobs WHERE lease = ? AND status = ?", (lease, RUNNING))
            for job_id in ids:
                self._requeue(
                    job_id, "the server stopped before this job finished; queued again", counted=False
                )
        return ids

    async def cancel(self, job_id: str, error: dict) -> str | None:
        return await self._run(self._cancel, job_id, error)

    def _cancel(self, job_id: str, error: dict) -> str | None:
        with self._transaction():
            row = self._db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row[0] not in _UNFINISHED:
                return "finished"
            self._finish(job_id, JobStatus.CANCELLED, None, error, None, False)
            self._log(job_id, f"cancelled: {error['message']}")
        return "cancelled"

    async def requeue_expired(self, before: float, max_attempts: int) -> tuple[list[str], list[str]]:
        return await self._run(self._requeue_expired, before, max_attempts)

    def _requeue_expired(self, before: float, max_attempts: int) -> tuple[list[str], list[str]]:
        requeued, failed = [], []
        with self._transaction():
            rows = self._db.execute(
                "SELECT id, detached, attempts FROM jobs WHERE status = ? AND lease_expires_at < ?",
                (RUNNING, before),
            ).fetchall()
            for job_id, detached, attempts in rows:
                if detached and attempts < max_attempts:
                    self._requeue(
                        job_id,
                        f"attempt {attempts} of {max_attempts} was interrupted (its worker stopped);"
                        " queued again",
                        counted=True,
                    )
                    requeued.append(job_id)
                else:
                    error = gave_up(attempts) if detached else INTERRUPTED
                    self._finish(job_id, JobStatus.FAILED, None, error, None, False)
                    self._log(job_id, f"failed: {error['message']}", "ERROR")
                    failed.append(job_id)
        return requeued, failed

    def _requeue(self, job_id: str, message: str, *, counted: bool) -> None:
        (model,) = self._db.execute(
            "UPDATE jobs SET status = ?, lease = NULL, lease_expires_at = NULL, attempts = attempts - ?"
            " WHERE id = ? RETURNING model",
            (QUEUED, 0 if counted else 1, job_id),
        ).fetchone()
        self._db.execute("DELETE FROM job_progress WHERE job_id = ?", (job_id,))
        self._log(job_id, message, "WARNING")
        self._signals.notify(CLAIMABLE, model)

    async def fail_waiting(self) -> list[str]:
        return await self._run(self._fail_waiting)

    def _fail_waiting(self) -> list[str]:
        with self._transaction():
            ids = self._ids("SELECT id FROM jobs WHERE status = ? AND detached = 0", (QUEUED,))
            for job_id in ids:
                self._finish(job_id, JobStatus.FAILED, None, INTERRUPTED, None, False)
                self._log(job_id, f"failed: {INTERRUPTED['message']}", "ERROR")
        return ids

    async def queue_depth(self, model: str) -> int:
        return await self._run(self._depth, model)

    def _depth(self, model: str) -> int:
        query = "SELECT COUNT(*) FROM jobs WHERE model = ? AND status = ?"
        return self._db.execute(query, (model, QUEUED)).fetchone()[0]

    async def queue_position(self, job_id: str) -> int | None:
        return await self._run(self._position, job_id)

    def _position(self, job_id: str) -> int | None:
        row = self._db.execute(
            "SELECT model, created_at, rowid FROM jobs WHERE id = ? AND status = ?", (job_id, QUEUED)
        ).fetchone()
        if row is None:
            return None
        model, created, rowid = row
        return self._db.execute(
            "SELECT COUNT(*) FROM jobs WHERE model = ? AND status = ?"
            " AND (created_at < ? OR (created_at = ? AND rowid < ?))",
            (model, QUEUED, created, created, rowid),
        ).fetchone()[0]

    # --- retention ---------------------------------------------------------------------------------

    async def expired(self, before: float) -> list[Job]:
        return await self._run(self._expired, before)

    def _expired(self, before: float) -> list[Job]:
        self._db.execute("DELETE FROM inline_images WHERE keep_until <= ?", (time.time(),))
        rows = self._db.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE created_at < ? AND status NOT IN (?, ?)",
            (before, *_UNFINISHED),
        ).fetchall()
        return [job_from_row(row, []) for row in rows]

    async def delete(self, job_ids: list[str]) -> None:
        await self._run(self._delete, job_ids)

    def _delete(self, job_ids: list[str]) -> None:
        with self._transaction():
            for job_id in job_ids:
                for table in ("job_logs", "job_inputs", "inline_images", "job_progress", "webhooks"):
                    self._db.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
                self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # --- signals and progress --------------------------------------------------------------------------

    async def wait_queued(self, model: str, timeout: float) -> None:
        await self._signals.wait(CLAIMABLE, model, timeout)

    async def wait_changed(self, job_id: str, timeout: float) -> None:
        await self._signals.wait(CHANGED, job_id, timeout)

    async def record_progress(
        self, job_id: str, lease: str, step: int, total: int, previews: list[bytes]
    ) -> bool:
        return await self._run(self._record_progress, job_id, lease, step, total, previews)

    def _record_progress(self, job_id: str, lease: str, step: int, total: int, previews: list[bytes]) -> bool:
        with self._transaction():
            held = self._db.execute(
                "SELECT 1 FROM jobs WHERE id = ? AND lease = ? AND status = ?", (job_id, lease, RUNNING)
            ).fetchone()
            if held is None:
                return False
            self._db.execute(
                "INSERT OR REPLACE INTO job_progress VALUES (?, ?, ?, ?, ?)",
                (job_id, step, total, _pack(previews), time.time()),
            )
        self._signals.notify(CHANGED, job_id)
        return True

    async def progress(self, job_id: str) -> Progress | None:
        return await self._run(self._progress, job_id)

    def _progress(self, job_id: str) -> Progress | None:
        row = self._db.execute(
            "SELECT step, total, previews, at FROM job_progress WHERE job_id = ?", (job_id,)
        ).fetchone()
        return None if row is None else Progress(row[0], row[1], _unpack(row[2]), row[3])

    def _ids(self, sql: str, args: tuple) -> list[str]:
        return [row[0] for row in self._db.execute(sql, args).fetchall()]

    @contextlib.contextmanager
    def _transaction(self):
        if self._db.in_transaction:  # nested: part of the caller's transaction
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @property
    def closed(self) -> bool:
        return self._lock.closed

    async def close(self) -> None:
        if self.closed:
            return
        await self._run(self._db.close)
        self._thread.shutdown()
        self._lock.close()


def _exclusive_lock(path: Path):
    """Held while the store is open: two servers on one data directory would run each other's jobs."""
    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirInUse(
            f"another kleinserve server is using {path.parent}; stop it, or give this one its own --data-dir"
        ) from None
    return handle


_LENGTH = struct.Struct(">I")


def _pack(blobs: list[bytes]) -> bytes:
    """Blobs in one: each after its 4-byte length."""
    return b"".join(_LENGTH.pack(len(blob)) + blob for blob in blobs)


def _unpack(data: bytes) -> list[bytes]:
    blobs, offset = [], 0
    while offset < len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        blobs.append(bytes(data[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    return blobs


def _dump(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value)
