"""The job store's contract, one narrow protocol per concern, and `JobStore`, their union, which every store
implements (tests/**/store_contract.py is the contract every implementation passes).

Every generation is a durable record (status, timings, logs, result or error), and the job store owns the
queue. A job is added with everything it needs to run (its packed inputs) and waits, status "queued", until
a worker claims it in a batch of compatible jobs (equal batch keys). The claim is a lease, renewed while
the batch runs; a job whose lease expires (its worker died) is queued again for another attempt, up to
`max_attempts`, then fails with the reason. A job nobody waits for any more (a synchronous request whose
caller is gone) is failed instead of run again. A cancel is a stored state change: the worker sees it at
its next renewal. Every write made under a lease names it, so a late write from a worker that lost its
lease changes nothing.

A caller that uses one concern may ask for its protocol alone (a `JobStore` satisfies each of them).
`sqlite.store.SQLiteJobStore` is the embedded default; `postgres.store.PostgresJobStore` the one several
processes share (--database-url); jobs/opening.py picks one from the settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kleinserve.job import Job, JobStatus, Progress, RequestSample, UsageEntry, WorkerRecord
from kleinserve.upload import UploadRecord


@dataclass
class Claim:
    """A batch a worker claimed: its jobs (oldest first) under one lease. With no jobs, `ready_at` is
    when the oldest queued job may go without company (None: nothing is queued)."""

    lease: str | None
    jobs: list[Job]
    ready_at: float | None = None


class JobRecords(Protocol):
    """Jobs as records: added with their inputs, read, logged, ended; and retention."""

    async def add(self, job: Job, inputs: bytes, *, max_queued: int | None = None) -> bool:
        """Record a queued job with its packed inputs. False (nothing recorded) when its model already
        has `max_queued` jobs queued."""

    async def get(self, job_id: str) -> Job | None: ...
    async def recent(self, owner: str | None, status: JobStatus | None = None, limit: int = 100) -> list[Job]:
        """`owner`'s jobs (None: those made on an open server), newest first, without their logs."""

    async def log(self, job_id: str, message: str, level: str = "INFO") -> None: ...
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
        """The job's end. Only an unfinished job ends (only a queued one with `only_queued`, only one
        still held under `lease` when given); False when nothing changed. `usage` (a succeeded job's) is
        added to the usage ledger in the same transaction, only when the job ended here; so is the end's log
        line ("succeeded", "failed: why"). Under a lease it is idempotent: asked again for the end that lease
        already recorded (a retry after an answer lost with the connection), it is True and adds nothing."""

    async def expired(self, before: float) -> list[Job]:
        """Ended jobs made before `before` (retention deletes them); expired inline results go meanwhile."""

    async def delete(self, job_ids: list[str]) -> None: ...


class Queue(Protocol):
    """The queue: claims under a lease, renewal, release, cancel, requeue and the queue's figures."""

    async def claim(self, model: str, *, max_images: int, lease_s: float, ready_before: float) -> Claim:
        """Claim the oldest queued job of `model` and the queued jobs with its batch key after it, up to
        `max_images` images, unless the batch is not full and its oldest job is newer than
        `ready_before` (then `ready_at` says when it will be)."""

    async def inputs(self, job_id: str) -> bytes | None: ...
    async def renew(self, lease: str, lease_s: float, note: str | None = None) -> set[str]:
        """Extend the lease; the ids of its jobs still held (a cancelled or requeued one is not). `note` (a
        step's "step 2/4") goes into each held job's log in the same transaction: one round trip a step."""

    async def release(self, lease: str) -> list[str]:
        """Give a lease's running jobs back to the queue, the attempt not counted (a graceful stop)."""

    async def cancel(self, job_id: str, error: dict) -> str | None:
        """ "cancelled" for a queued or running job (it ends now; its worker sees it at its next renewal),
        "finished" when it already ended, None for an unknown job."""

    async def requeue_expired(self, before: float, max_attempts: int) -> tuple[list[str], list[str]]:
        """Running jobs whose lease expired before `before`: queued again if detached with attempts left,
        else failed. Returns (requeued ids, failed ids)."""

    async def fail_waiting(self) -> list[str]:
        """Queued jobs that are not detached (their callers went with the last process) fail."""

    async def queue_depth(self, model: str) -> int: ...
    async def queue_position(self, job_id: str) -> int | None:
        """0-based place among its model's queued jobs; None unless it is queued."""


class JobSignals(Protocol):
    """Signals between processes (the embedded store: within its process; PostgreSQL: LISTEN/NOTIFY).
    A wait may end early or spuriously: the caller reads the state again after every wait."""

    async def wait_queued(self, model: str, timeout: float) -> None:
        """Until a job of `model` may have become claimable (added, requeued, released), or `timeout`."""

    async def wait_changed(self, job_id: str, timeout: float) -> None:
        """Until the job may have changed (a step recorded, ended, cancelled, requeued), or `timeout`."""


class StepProgress(Protocol):
    """Progress of running jobs, for status streams answered by any API server."""

    async def record_progress(
        self, job_id: str, lease: str, step: int, total: int, previews: list[bytes]
    ) -> bool:
        """The job's latest step (replacing the previous one); False when `lease` no longer holds it."""

    async def progress(self, job_id: str) -> Progress | None: ...


class InlineResults(Protocol):
    """Images kept in the store for a while (results served without the image store)."""

    async def put_inline(
        self, job_id: str, images: list[bytes], keep_until: float, *, lease: str | None = None
    ) -> bool:
        """Keep a job's images until `keep_until`; with `lease`, only while the job is running under it
        (False, nothing written, once it is not)."""

    async def inline(self, job_id: str) -> list[bytes] | None:
        """A job's inline images, None once they expired (or if it had none)."""


class UsageLedger(Protocol):
    """What succeeded jobs cost (written by `finish`), kept after the jobs themselves are deleted."""

    async def usage_by_day(
        self,
        owner: str | None,
        *,
        all_owners: bool = False,
        model: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[dict]:
        """Sums of the ledger per UTC day, owner and model, oldest day first: {"day": "YYYY-MM-DD", "owner",
        "model", "requests", "images", "megapixels", "engine_seconds", "cost_usd"} (cost None when no entry
        had a price). `owner`'s entries only, unless `all_owners`; `since` <= finished_at < `until`."""


class RequestSamples(Protocol):
    """Request samples: the latency and success figures gateways publish."""

    async def record_sample(self, sample: RequestSample) -> None: ...
    async def samples(self, since: float, model: str | None = None) -> list[RequestSample]:
        """Samples with `at` >= `since`, oldest first."""

    async def forget_samples(self, before: float) -> None: ...


class WorkerRegistry(Protocol):
    """Workers (scaled out: separate processes that claim and run batches) as their heartbeats left them."""

    async def heartbeat(self, worker: WorkerRecord) -> None:
        """Insert or replace the worker's record (seen_at is the caller's now)."""

    async def workers(self, seen_since: float) -> list[WorkerRecord]:
        """Workers whose last heartbeat is at or after `seen_since`."""


class WebhookRows(Protocol):
    """Webhooks: a job added with `webhook` set has a pending delivery, sent once the job ended (wherever it
    ran) by the one process that claimed it."""

    async def claim_webhooks(self, *, limit: int, lease_s: float) -> list[str]:
        """Up to `limit` ended jobs whose webhook is pending and not held under a live lease, oldest end
        first, now leased to the caller for `lease_s` (no other process gets them meanwhile)."""

    async def hold_webhook(self, job_id: str, until: float | None) -> None:
        """The job's pending webhook leased until `until` (None: released, claimable at once once the job
        ended), whoever held it: its holder renews it (the submitter following a job added with
        webhook_held_s, which started the lease)."""

    async def webhook_done(self, job_id: str) -> None:
        """The job's webhook was delivered or given up on: it is never claimed again."""


class UploadRecords(Protocol):
    """Uploaded files' records (Replicate's /v1/files; their bytes are in the storage layer), each its
    owner's: another owner's is as unknown as a missing one."""

    async def add_upload(self, record: UploadRecord) -> None: ...
    async def upload(self, upload_id: str, owner: str | None, now: float) -> UploadRecord | None:
        """The owner's upload, unexpired at `now`."""

    async def uploads(self, owner: str | None, now: float, limit: int) -> list[UploadRecord]:
        """The owner's unexpired uploads, newest first."""

    async def delete_upload(self, upload_id: str, owner: str | None) -> UploadRecord | None:
        """Remove the owner's upload; the removed record, or None."""

    async def expire_uploads(self, now: float) -> list[UploadRecord]:
        """Remove every upload expired at `now`; the removed records."""


class JobStore(
    JobRecords,
    Queue,
    JobSignals,
    StepProgress,
    InlineResults,
    UsageLedger,
    RequestSamples,
    WorkerRegistry,
    WebhookRows,
    UploadRecords,
    Protocol,
):
    """Every concern at once: what a store implements and what the service is handed."""

    outage: str | None  # why its last call could not reach the database (DatabaseUnavailable); None: it did

    async def close(self) -> None: ...
