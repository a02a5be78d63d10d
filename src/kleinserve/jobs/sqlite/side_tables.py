"""The embedded job store's tables beside the queue: inline results, the usage ledger, request samples,
worker heartbeats and webhook deliveries. `SQLiteSideTables` is a mixin of `SQLiteJobStore`
(sqlite_jobs.py), whose connection, thread (`_run`), `_transaction` and `_ids` it uses.
"""

from __future__ import annotations

import json
import sqlite3
import time

from kleinserve.job import JobStatus, RequestSample, WorkerRecord

_UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


class SQLiteSideTables:
    _db: sqlite3.Connection  # the store's; so are _run, _transaction and _ids

    # --- inline results ----------------------------------------------------------------------------

    async def put_inline(self, job_id: str, images: list[bytes], keep_until: float) -> None:
        await self._run(self._put_inline, job_id, images, keep_until)

    def _put_inline(self, job_id: str, images: list[bytes], keep_until: float) -> None:
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO inline_images VALUES (?, ?, ?, ?)",
                [(job_id, i, data, keep_until) for i, data in enumerate(images)],
            )

    async def inline(self, job_id: str) -> list[bytes] | None:
        return await self._run(self._inline, job_id)

    def _inline(self, job_id: str) -> list[bytes] | None:
        rows = self._db.execute(
            "SELECT data FROM inline_images WHERE job_id = ? AND keep_until > ? ORDER BY position",
            (job_id, time.time()),
        ).fetchall()
        return [bytes(row[0]) for row in rows] or None

    # --- the usage ledger ---------------------------------------------------------------------------

    async def usage_by_day(
        self,
        owner: str | None,
        *,
        all_owners: bool = False,
        model: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[dict]:
        return await self._run(self._usage_by_day, owner, all_owners, model, since, until)

    def _usage_by_day(self, owner, all_owners, model, since, until) -> list[dict]:
        rows = self._db.execute(
            "SELECT date(finished_at, 'unixepoch') AS day, owner, model, COUNT(*), SUM(images),"
            " SUM(megapixels), SUM(engine_seconds), SUM(cost_usd) FROM usage"
            " WHERE (? OR owner IS ?) AND (? IS NULL OR model = ?)"
            " AND (? IS NULL OR finished_at >= ?) AND (? IS NULL OR finished_at < ?)"
            " GROUP BY day, owner, model ORDER BY day, owner, model",
            (all_owners, owner, model, model, since, since, until, until),
        ).fetchall()
        names = ("day", "owner", "model", "requests", "images", "megapixels", "engine_seconds", "cost_usd")
        return [dict(zip(names, row, strict=True)) for row in rows]

    # --- request samples -----------------------------------------------------------------------------

    async def record_sample(self, sample: RequestSample) -> None:
        await self._run(self._record_sample, sample)

    def _record_sample(self, sample: RequestSample) -> None:
        self._db.execute(
            "INSERT INTO request_samples VALUES (?, ?, ?, ?, ?, ?)",
            (sample.at, sample.model, sample.seconds, sample.ttfb, sample.status, sample.images),
        )

    async def samples(self, since: float, model: str | None = None) -> list[RequestSample]:
        return await self._run(self._samples, since, model)

    def _samples(self, since: float, model: str | None) -> list[RequestSample]:
        rows = self._db.execute(
            "SELECT at, model, seconds, ttfb, status, images FROM request_samples"
            " WHERE at >= ? AND (? IS NULL OR model = ?) ORDER BY at, rowid",
            (since, model, model),
        ).fetchall()
        return [RequestSample(*row) for row in rows]

    async def forget_samples(self, before: float) -> None:
        await self._run(self._db.execute, "DELETE FROM request_samples WHERE at < ?", (before,))

    # --- worker heartbeats ------------------------------------------------------------------------

    async def heartbeat(self, worker: WorkerRecord) -> None:
        await self._run(
            self._db.execute,
            "INSERT OR REPLACE INTO workers VALUES (?, ?, ?, ?, ?, ?)",
            (worker.id, worker.host, worker.pid, json.dumps(worker.models), worker.started_at,
             worker.seen_at),
        )  # fmt: skip

    async def workers(self, seen_since: float) -> list[WorkerRecord]:
        return await self._run(self._workers, seen_since)

    def _workers(self, seen_since: float) -> list[WorkerRecord]:
        rows = self._db.execute(
            "SELECT id, host, pid, models, started_at, seen_at FROM workers WHERE seen_at >= ?"
            " ORDER BY started_at, id",
            (seen_since,),
        ).fetchall()
        return [WorkerRecord(*row[:3], json.loads(row[3]), *row[4:]) for row in rows]

    # --- webhooks -------------------------------------------------------------------------------------

    async def claim_webhooks(self, *, limit: int, lease_s: float) -> list[str]:
        return await self._run(self._claim_webhooks, limit, lease_s)

    def _claim_webhooks(self, limit: int, lease_s: float) -> list[str]:
        now = time.time()
        with self._transaction():
            ids = self._ids(
                "SELECT w.job_id FROM webhooks w JOIN jobs j ON j.id = w.job_id WHERE w.done = 0"
                " AND (w.lease_expires_at IS NULL OR w.lease_expires_at < ?) AND j.status NOT IN (?, ?)"
                " ORDER BY j.finished_at LIMIT ?",
                (now, *_UNFINISHED, limit),
            )
            self._db.executemany(
                "UPDATE webhooks SET lease_expires_at = ? WHERE job_id = ?", [(now + lease_s, i) for i in ids]
            )
        return ids

    async def webhook_done(self, job_id: str) -> None:
        await self._run(self._db.execute, "UPDATE webhooks SET done = 1 WHERE job_id = ?", (job_id,))
