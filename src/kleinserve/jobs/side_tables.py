"""The tables beside the queue, written once for both backends: inline results, the usage ledger, request
samples, worker heartbeats and webhook deliveries. Like queue_policy.py, each call is a function of the
backend's `Database`, run through the store's `_run`.
"""

from __future__ import annotations

import json
import time

from kleinserve.job import RequestSample, WorkerRecord
from kleinserve.jobs.database import Database
from kleinserve.jobs.records import RUNNING, UNFINISHED

_USAGE_COLUMNS = ("day", "owner", "model", "requests", "images", "megapixels", "engine_seconds", "cost_usd")


def put_inline(db: Database, job_id: str, images: list[bytes], keep_until: float, lease: str | None) -> bool:
    with db.transaction():
        if lease is not None and not _held(db, job_id, lease):
            return False
        db.executemany(
            "INSERT INTO inline_images VALUES (?, ?, ?, ?) ON CONFLICT (job_id, position)"
            " DO UPDATE SET data = excluded.data, keep_until = excluded.keep_until",
            [(job_id, i, data, keep_until) for i, data in enumerate(images)],
        )
    return True


def _held(db: Database, job_id: str, lease: str) -> bool:
    """The job runs under `lease`; locked: its end waits for the caller's write."""
    sql = f"SELECT 1 FROM jobs WHERE id = ? AND lease = ? AND status = ? {db.lock('share')}"
    return db.execute(sql, (job_id, lease, RUNNING)).fetchone() is not None


def inline(db: Database, job_id: str) -> list[bytes] | None:
    rows = db.execute(
        "SELECT data FROM inline_images WHERE job_id = ? AND keep_until > ? ORDER BY position",
        (job_id, time.time()),
    ).fetchall()
    return [bytes(row[0]) for row in rows] or None


def usage_by_day(db: Database, owner, all_owners, model, since, until) -> list[dict]:
    where, args = ["TRUE"], []
    if not all_owners:
        where.append("owner IS NULL" if owner is None else "owner = ?")
        args += [] if owner is None else [owner]
    for condition, value in (("model = ?", model), ("finished_at >= ?", since), ("finished_at < ?", until)):
        if value is not None:
            where.append(condition)
            args.append(value)
    rows = db.execute(
        f"SELECT {db.utc_day} AS day, owner, model, COUNT(*), SUM(images), SUM(megapixels),"
        f" SUM(engine_seconds), SUM(cost_usd) FROM usage_ledger WHERE {' AND '.join(where)}"
        " GROUP BY day, owner, model ORDER BY day, owner NULLS FIRST, model",
        args,
    ).fetchall()
    return [dict(zip(_USAGE_COLUMNS, row, strict=True)) for row in rows]


def record_sample(db: Database, sample: RequestSample) -> None:
    db.execute(
        "INSERT INTO request_samples (at, model, seconds, ttfb, status, images) VALUES (?, ?, ?, ?, ?, ?)",
        (sample.at, sample.model, sample.seconds, sample.ttfb, sample.status, sample.images),
    )


def samples(db: Database, since: float, model: str | None) -> list[RequestSample]:
    by_model, args = ("", (since,)) if model is None else (" AND model = ?", (since, model))
    rows = db.execute(
        f"SELECT at, model, seconds, ttfb, status, images FROM request_samples WHERE at >= ?{by_model}"
        f" ORDER BY at, {db.seq}",
        args,
    ).fetchall()
    return [RequestSample(*row) for row in rows]


def forget_samples(db: Database, before: float) -> None:
    db.execute("DELETE FROM request_samples WHERE at < ?", (before,))


def heartbeat(db: Database, worker: WorkerRecord) -> None:
    db.execute(
        "INSERT INTO workers VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET host = excluded.host,"
        " pid = excluded.pid, models = excluded.models, started_at = excluded.started_at,"
        " seen_at = excluded.seen_at",
        (worker.id, worker.host, worker.pid, json.dumps(worker.models), worker.started_at, worker.seen_at),
    )


def workers(db: Database, seen_since: float) -> list[WorkerRecord]:
    rows = db.execute(
        "SELECT id, host, pid, models, started_at, seen_at FROM workers WHERE seen_at >= ?"
        " ORDER BY started_at, id",
        (seen_since,),
    ).fetchall()
    return [WorkerRecord(*row[:3], json.loads(row[3]), *row[4:]) for row in rows]


def claim_webhooks(db: Database, limit: int, lease_s: float) -> list[str]:
    now = time.time()
    with db.transaction():
        rows = db.execute(
            "SELECT w.job_id FROM webhooks w JOIN jobs j ON j.id = w.job_id WHERE NOT w.done"
            " AND (w.lease_expires_at IS NULL OR w.lease_expires_at < ?) AND j.status NOT IN (?, ?)"
            f" ORDER BY j.finished_at, j.{db.seq} LIMIT ? {db.lock('skip', of='w')}",
            (now, *UNFINISHED, limit),
        ).fetchall()
        ids = [row[0] for row in rows]
        db.executemany(
            "UPDATE webhooks SET lease_expires_at = ? WHERE job_id = ?", [(now + lease_s, i) for i in ids]
        )
    return ids


def hold_webhook(db: Database, job_id: str, until: float | None) -> None:
    db.execute("UPDATE webhooks SET lease_expires_at = ? WHERE job_id = ? AND NOT done", (until, job_id))


def webhook_done(db: Database, job_id: str) -> None:
    db.execute("UPDATE webhooks SET done = TRUE WHERE job_id = ?", (job_id,))


class SideTables:
    """The side tables' async calls; a mixin of both stores (their `_run` runs each function above)."""

    async def _run(self, function, *args): ...

    async def put_inline(
        self, job_id: str, images: list[bytes], keep_until: float, *, lease: str | None = None
    ) -> bool:
        return await self._run(put_inline, job_id, images, keep_until, lease)

    async def inline(self, job_id: str) -> list[bytes] | None:
        return await self._run(inline, job_id)

    async def usage_by_day(
        self,
        owner: str | None,
        *,
        all_owners: bool = False,
        model: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[dict]:
        return await self._run(usage_by_day, owner, all_owners, model, since, until)

    async def record_sample(self, sample: RequestSample) -> None:
        await self._run(record_sample, sample)

    async def samples(self, since: float, model: str | None = None) -> list[RequestSample]:
        return await self._run(samples, since, model)

    async def forget_samples(self, before: float) -> None:
        await self._run(forget_samples, before)

    async def heartbeat(self, worker: WorkerRecord) -> None:
        await self._run(heartbeat, worker)

    async def workers(self, seen_since: float) -> list[WorkerRecord]:
        return await self._run(workers, seen_since)

    async def claim_webhooks(self, *, limit: int, lease_s: float) -> list[str]:
        return await self._run(claim_webhooks, limit, lease_s)

    async def hold_webhook(self, job_id: str, until: float | None) -> None:
        await self._run(hold_webhook, job_id, until)

    async def webhook_done(self, job_id: str) -> None:
        await self._run(webhook_done, job_id)
