"""Jobs: every generation is a durable record (status, timings, logs, result or error).

`JobStore` is the interface the server uses; `SQLiteJobStore` is the embedded default, one file under
the data directory. Its calls run on one dedicated thread so the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass
class Job:
    id: str
    model: str
    params: dict[str, Any]  # what was asked, for the record (prompt, size, steps, seed, n, ...)
    status: JobStatus = JobStatus.QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None  # images (storage keys, sizes), seed, timings
    error: dict[str, Any] | None = None  # {"type", "message", "param"}
    logs: list[dict[str, Any]] = field(default_factory=list)  # {"timestamp", "level", "message"}
    owner: str | None = None  # who made it (an API key's fingerprint); None on an open server


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore(Protocol):
    async def add(self, job: Job) -> None: ...
    async def get(self, job_id: str) -> Job | None: ...
    async def mark_running(self, job_id: str) -> None: ...
    async def finish(
        self, job_id: str, status: JobStatus, *, result: dict | None = None, error: dict | None = None
    ) -> None: ...
    async def log(self, job_id: str, message: str, level: str = "INFO") -> None: ...
    async def fail_unfinished(self, error: dict) -> list[str]: ...
    async def expired(self, before: float) -> list[Job]: ...
    async def delete(self, job_ids: list[str]) -> None: ...
    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    params TEXT NOT NULL,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE TABLE IF NOT EXISTS job_logs (
    job_id TEXT NOT NULL,
    timestamp REAL NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_logs_job ON job_logs (job_id);
"""
_COLUMNS_ADDED = {"owner": "ALTER TABLE jobs ADD COLUMN owner TEXT"}  # to databases made before them

_UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
_FIELDS = "id, model, status, created_at, started_at, finished_at, params, result, error, owner"


class SQLiteJobStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kleinserve-jobs")
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")  # readers never wait on the writer
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes, fast
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column, statement in _COLUMNS_ADDED.items():
            if column not in columns:
                self._db.execute(statement)

    async def _run(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    async def add(self, job: Job) -> None:
        await self._run(self._add, job)

    def _add(self, job: Job) -> None:
        self._db.executemany(
            "INSERT INTO job_logs VALUES (?, ?, ?, ?)",
            [(job.id, e["timestamp"], e["level"], e["message"]) for e in job.logs],
        )
        self._db.execute(
            "INSERT INTO jobs (id, model, status, created_at, started_at, finished_at, params, result, error,"
            " owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            ),
        )

    async def get(self, job_id: str) -> Job | None:
        return await self._run(self._get, job_id)

    def _get(self, job_id: str) -> Job | None:
        row = self._db.execute(f"SELECT {_FIELDS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        logs = self._db.execute(
            "SELECT timestamp, level, message FROM job_logs WHERE job_id = ? ORDER BY rowid", (job_id,)
        ).fetchall()
        return _job_from_row(row, logs)

    async def mark_running(self, job_id: str) -> None:
        await self._run(
            self._execute,
            "UPDATE jobs SET status = ?, started_at = ? WHERE id = ? AND status = ?",
            (JobStatus.RUNNING.value, time.time(), job_id, JobStatus.QUEUED.value),
        )

    async def finish(
        self, job_id: str, status: JobStatus, *, result: dict | None = None, error: dict | None = None
    ) -> None:
        await self._run(
            self._execute,
            "UPDATE jobs SET status = ?, finished_at = ?, result = ?, error = ? WHERE id = ?",
            (status.value, time.time(), _dump(result), _dump(error), job_id),
        )

    async def log(self, job_id: str, message: str, level: str = "INFO") -> None:
        await self._run(
            self._execute, "INSERT INTO job_logs VALUES (?, ?, ?, ?)", (job_id, time.time(), level, message)
        )

    async def fail_unfinished(self, error: dict) -> list[str]:
        return await self._run(self._fail_unfinished, error)

    def _fail_unfinished(self, error: dict) -> list[str]:
        ids = [
            row[0]
            for row in self._db.execute("SELECT id FROM jobs WHERE status IN (?, ?)", _UNFINISHED).fetchall()
        ]
        now = time.time()
        self._db.execute("BEGIN")
        for job_id in ids:
            self._db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error = ? WHERE id = ?",
                (JobStatus.FAILED.value, now, json.dumps(error), job_id),
            )
            self._db.execute(
                "INSERT INTO job_logs VALUES (?, ?, ?, ?)", (job_id, now, "ERROR", error["message"])
            )
        self._db.execute("COMMIT")
        return ids

    async def expired(self, before: float) -> list[Job]:
        return await self._run(self._expired, before)

    def _expired(self, before: float) -> list[Job]:
        rows = self._db.execute(
            f"SELECT {_FIELDS} FROM jobs WHERE created_at < ? AND status NOT IN (?, ?)",
            (before, *_UNFINISHED),
        ).fetchall()
        return [_job_from_row(row, []) for row in rows]

    async def delete(self, job_ids: list[str]) -> None:
        await self._run(self._delete, job_ids)

    def _delete(self, job_ids: list[str]) -> None:
        self._db.execute("BEGIN")
        for job_id in job_ids:
            self._db.execute("DELETE FROM job_logs WHERE job_id = ?", (job_id,))
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        self._db.execute("COMMIT")

    def _execute(self, sql: str, args: tuple) -> None:
        self._db.execute(sql, args)

    async def close(self) -> None:
        await self._run(self._db.close)
        self._thread.shutdown()


def _dump(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value)


def _job_from_row(row: tuple, logs: list[tuple]) -> Job:
    job_id, model, status, created, started, finished, params, result, error, owner = row
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
    )
