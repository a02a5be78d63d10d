"""The PostgreSQL job store's tables beside the queue: inline results, the usage ledger, request samples,
worker heartbeats and webhook deliveries. `PostgresSideTables` is a mixin of `PostgresJobStore`
(postgres_jobs.py), whose connections (`_run` passes each call its thread's) it uses.
"""

from __future__ import annotations

import json
import time

from kleinserve.job import JobStatus, RequestSample, WorkerRecord

QUEUED, RUNNING = JobStatus.QUEUED.value, JobStatus.RUNNING.value


class PostgresSideTables:
    # the store's: async def _run(self, function, *args), which calls function(connection, *args)

    # --- inline results --------------------------------------------------------------------------------

    async def put_inline(self, job_id: str, images: list[bytes], keep_until: float) -> None:
        await self._run(self._put_inline, job_id, images, keep_until)

    def _put_inline(self, conn, job_id: str, images: list[bytes], keep_until: float) -> None:
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO inline_images VALUES (%s, %s, %s, %s) ON CONFLICT (job_id, position)"
                " DO UPDATE SET data = EXCLUDED.data, keep_until = EXCLUDED.keep_until",
                [(job_id, i, data, keep_until) for i, data in enumerate(images)],
            )

    async def inline(self, job_id: str) -> list[bytes] | None:
        return await self._run(self._inline, job_id)

    def _inline(self, conn, job_id: str) -> list[bytes] | None:
        rows = conn.execute(
            "SELECT data FROM inline_images WHERE job_id = %s AND keep_until > %s ORDER BY position",
            (job_id, time.time()),
        ).fetchall()
        return [bytes(row[0]) for row in rows] or None

    # --- the usage ledger and request samples ------------------------------------------------------------

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

    def _usage_by_day(self, conn, owner, all_owners, model, since, until) -> list[dict]:
        rows = conn.execute(
            "SELECT to_char(to_timestamp(finished_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, owner, model,"
            " COUNT(*), SUM(images), SUM(megapixels), SUM(engine_seconds), SUM(cost_usd) FROM usage_ledger"
            " WHERE (%s OR owner IS NOT DISTINCT FROM %s::text) AND (%s::text IS NULL OR model = %s)"
            " AND (%s::float8 IS NULL OR finished_at >= %s) AND (%s::float8 IS NULL OR finished_at < %s)"
            " GROUP BY day, owner, model ORDER BY day, owner NULLS FIRST, model",
            (all_owners, owner, model, model, since, since, until, until),
        ).fetchall()
        names = ("day", "owner", "model", "requests", "images", "megapixels", "engine_seconds", "cost_usd")
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def record_sample(self, sample: RequestSample) -> None:
        await self._run(self._record_sample, sample)

    def _record_sample(self, conn, sample: RequestSample) -> None:
        conn.execute(
            "INSERT INTO request_samples (at, model, seconds, ttfb, status, images)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (sample.at, sample.model, sample.seconds, sample.ttfb, sample.status, sample.images),
        )

    async def samples(self, since: float, model: str | None = None) -> list[RequestSample]:
        return await self._run(self._samples, since, model)

    def _samples(self, conn, since: float, model: str | None) -> list[RequestSample]:
        rows = conn.execute(
            "SELECT at, model, seconds, ttfb, status, images FROM request_samples"
            " WHERE at >= %s AND (%s::text IS NULL OR model = %s) ORDER BY at, seq",
            (since, model, model),
        ).fetchall()
        return [RequestSample(*row) for row in rows]

    async def forget_samples(self, before: float) -> None:
        await self._run(_execute, "DELETE FROM request_samples WHERE at < %s", (before,))

    # --- worker heartbeats ---------------------------------------------------------------------------

    async def heartbeat(self, worker: WorkerRecord) -> None:
        await self._run(
            _execute,
            "INSERT INTO workers VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET"
            " host = EXCLUDED.host, pid = EXCLUDED.pid, models = EXCLUDED.models,"
            " started_at = EXCLUDED.started_at, seen_at = EXCLUDED.seen_at",
            (worker.id, worker.host, worker.pid, json.dumps(worker.models), worker.started_at,
             worker.seen_at),
        )  # fmt: skip

    async def workers(self, seen_since: float) -> list[WorkerRecord]:
        return await self._run(self._workers, seen_since)

    def _workers(self, conn, seen_since: float) -> list[WorkerRecord]:
        rows = conn.execute(
            "SELECT id, host, pid, models, started_at, seen_at FROM workers WHERE seen_at >= %s"
            " ORDER BY started_at, id",
            (seen_since,),
        ).fetchall()
        return [WorkerRecord(*row[:3], json.loads(row[3]), *row[4:]) for row in rows]

    # --- webhooks ----------------------------------------------------------------------------------------

    async def claim_webhooks(self, *, limit: int, lease_s: float) -> list[str]:
        return await self._run(self._claim_webhooks, limit, lease_s)

    def _claim_webhooks(self, conn, limit: int, lease_s: float) -> list[str]:
        now = time.time()
        with conn.transaction():
            ids = _ids(
                conn,
                "SELECT w.job_id FROM webhooks w JOIN jobs j ON j.id = w.job_id WHERE NOT w.done"
                " AND (w.lease_expires_at IS NULL OR w.lease_expires_at < %s) AND j.status <> ALL(%s)"
                " ORDER BY j.finished_at, j.seq LIMIT %s FOR UPDATE OF w SKIP LOCKED",
                (now, [QUEUED, RUNNING], limit),
            )
            conn.execute(
                "UPDATE webhooks SET lease_expires_at = %s WHERE job_id = ANY(%s)", (now + lease_s, ids)
            )
        return ids

    async def webhook_done(self, job_id: str) -> None:
        await self._run(_execute, "UPDATE webhooks SET done = TRUE WHERE job_id = %s", (job_id,))


def _execute(conn, sql: str, args: tuple) -> None:
    conn.execute(sql, args)


def _ids(conn, sql: str, args: tuple) -> list[str]:
    return [row[0] for row in conn.execute(sql, args).fetchall()]
