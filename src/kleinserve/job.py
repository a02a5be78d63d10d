"""A job's record: its status, timestamps, what it asked for and how it ended, and the small records kept
beside it (what it cost, a request's timing, a worker's heartbeat, a running job's latest step).

Plain values that the API, the service and the stores all read; the job store (jobs/) persists them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


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
    batch_key: str = ""  # jobs with equal keys may share a batch (batch_policy.py)
    num_images: int = 1
    detached: bool = False  # no caller waits on it (a queue submission): it is run again after a crash
    attempts: int = 0  # times a worker claimed it
    webhook: str | None = None  # where its end is POSTed; kept in the store's webhook rows, not read back
    webhook_held_s: float = 0.0  # its webhook row starts leased this long (its submitter follows it)


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class UsageEntry:
    """What one succeeded job cost, recorded with its end (the same transaction) and kept after the job
    itself is deleted by retention: the ledger behind GET /v1/usage."""

    job_id: str
    owner: str | None  # the API key's fingerprint (a hash, never the key); None on an open server
    model: str
    finished_at: float
    images: int
    megapixels: float
    engine_seconds: float  # the job's share of its batches' engine time
    cost_usd: float | None  # at the operator's prices when it finished; None: no price set


@dataclass(frozen=True)
class Progress:
    """A running job's latest denoising step, as its worker recorded it (previews: encoded images)."""

    step: int
    total: int
    previews: list[bytes]
    at: float


@dataclass(frozen=True)
class RequestSample:
    """One generation request as an API server measured it, for /v1/stats and /status: kept in the store so
    every API server reports the same figures, over restarts."""

    at: float  # when the response ended
    model: str
    seconds: float  # received -> response fully sent
    ttfb: float  # received -> first response byte
    status: int  # the HTTP status answered
    images: int  # images delivered (0 unless it succeeded)


@dataclass(frozen=True)
class WorkerRecord:
    """A worker process as it last reported itself (heartbeat): which models it serves and their state."""

    id: str
    host: str
    pid: int
    models: dict[str, dict[str, Any]]  # model id -> {"state": "loading"|"ready"|"failed", "error"?, ...}
    started_at: float
    seen_at: float
