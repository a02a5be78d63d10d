"""The PostgreSQL job store: one queue shared by several processes (API servers, workers); jobs.py has the
contract, sqlite_jobs.py the embedded twin whose records this one matches field for field.

A claim locks its jobs with FOR UPDATE SKIP LOCKED, so concurrent workers never take the same job and never
wait for each other. Every write under a lease names it in its WHERE clause. Writers NOTIFY in the same
transaction (delivered at commit): "kleinserve_claimable" with the model when work may be claimable,
"kleinserve_changed" with the job id on every change of a job; one LISTEN connection per store wakes its
waiters (job_signals.py), whose timeout is the polling backstop.

Calls run synchronous psycopg connections on a small thread pool, one connection per thread: as with the
SQLite store, the event loop never waits on the database and a store opened under one event loop serves
another. psycopg comes with the `scale` extra; the default install never imports this module. Here: the
records and the queue, method for method beside sqlite_jobs.py; the tables beside the queue (inline results,
usage, samples, workers, webhooks) are postgres_side_tables.py's; the schema is postgres_schema.py's.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from urllib.parse import urlsplit

from kleinserve.errors import KleinserveError
from kleinserve.job import Job, JobStatus, Progress, UsageEntry
from kleinserve.jobs.contract import Claim
from kleinserve.jobs.postgres.schema import create_schema
from kleinserve.jobs.postgres.side_tables import PostgresSideTables
from kleinserve.jobs.records import INTERRUPTED, JOB_COLUMNS, gave_up, job_from_row
from kleinserve.jobs.signals import CHANGED, CLAIMABLE, Signals

QUEUED, RUNNING = JobStatus.QUEUED.value, JobStatus.RUNNING.value
_CHANNELS = {"kleinserve_claimable": CLAIMABLE, "kleinserve_changed": CHANGED}
_CHANNEL = {topic: channel for channel, topic in _CHANNELS.items()}
_MAX_PAYLOAD = 7999  # bytes; PostgreSQL refuses 8000 and more (an empty payload wakes the whole topic)
_ORDER = "ORDER BY created_at, seq"  # seq: insertion order, for jobs made at the same instant


class DatabaseUnavailable(KleinserveError):
    """The job database cannot be reached or used."""


class PostgresJobStore(PostgresSideTables):
    def __init__(self, url: str, *, connections: int = 4):
        try:
            import psycopg
        except ImportError:
            raise DatabaseUnavailable(
                "--database-url needs the PostgreSQL driver: pip install 'kleinserve[scale]'"
            ) from None
        self._psycopg = psycopg
        self._url = url
        self._local = threading.local()
        self._connections: list = []
        self._connections_lock = threading.Lock()
        with self._connect() as conn:
            create_schema(conn)
        self._pool = ThreadPoolExecutor(max_workers=connections, thread_name_prefix="kleinserve-pg")
        self._signals = Signals()
        self._closed = False
        self._stop_channel = f"kleinserve_stop_{uuid.uuid4().hex}"
        listening = threading.Event()
        self._listener = threading.Thread(
            target=self._listen, args=(listening,), name="kleinserve-pg-listen", daemon=True
        )
        self._listener.start()
        listening.wait(30)

    # --- connections -------------------------------------------------------------------------------

    def _connect(self):
        try:
            return self._psycopg.connect(self._url, autocommit=True, connect_timeout=10)
        except self._psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"cannot reach the job database at {_safe(self._url)}: {exc}") from None

    def _connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = self._local.conn = self._connect()
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    async def _run(self, function, *args):
        call = partial(self._call, function, *args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def _call(self, function, *args):
        return function(self._connection(), *args)

    # --- records -------------------------------------------------------------------------------------

    async def add(self, job: Job, inputs: bytes, *, max_queued: int | None = None) -> bool:
        return await self._run(self._add, job, inputs, max_queued)

    def _add(self, conn, job: Job, inputs: bytes, max_queued: int | None) -> bool:
        with conn.transaction():
            if max_queued is not None:  # one add per model at a time, so two servers cannot both pass
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"kleinserve add {job.model}",))
                if _depth(conn, job.model) >= max_queued:
                    return False
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO job_logs (job_id, timestamp, level, message) VALUES (%s, %s, %s, %s)",
                    [(job.id, e["timestamp"], e["level"], e["message"]) for e in job.logs],
                )
            conn.execute(
                f"INSERT INTO jobs ({JOB_COLUMNS}, queued_at) VALUES ({', '.join(['%s'] * 15)})",
                (job.id, job.model, job.status.value, job.created_at, job.started_at, job.finished_at,
                 json.dumps(job.params), _dump(job.result), _dump(job.error), job.owner, job.batch_key,
                 job.num_images, job.detached, job.attempts, time.time()),
            )  # fmt: skip
            conn.execute("INSERT INTO job_inputs VALUES (%s, %s)", (job.id, inputs))
            if job.webhook:
                conn.execute("INSERT INTO webhooks (job_id, url) VALUES (%s, %s)", (job.id, job.webhook))
            _notify(conn, CLAIMABLE, job.model)
        return True

    async def get(self, job_id: str) -> Job | None:
        return await self._run(self._get, job_id)

    def _get(self, conn, job_id: str) -> Job | None:
        row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,)).fetchone()
        if row is None:
            return None
        logs = conn.execute(
            "SELECT timestamp, level, message FROM job_logs WHERE job_id = %s ORDER BY seq", (job_id,)
        ).fetchall()
        return job_from_row(row, logs)

    async def recent(self, owner: str | None, status: JobStatus | None = None, limit: int = 100) -> list[Job]:
        return await self._run(self._recent, owner, status and status.value, limit)

    def _recent(self, conn, owner: str | None, status: str | None, limit: int) -> list[Job]:
        rows = conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE owner IS NOT DISTINCT FROM %s::text"
            " AND (%s::text IS NULL OR status = %s) ORDER BY created_at DESC, seq DESC LIMIT %s",
            (owner, status, status, limit),
        ).fetchall()
        return [job_from_row(row, []) for row in rows]

    async def log(self, job_id: str, message: str, level: str = "INFO") -> None:
        await self._run(self._log, job_id, message, level)

    def _log(self, conn, job_id: str, message: str, level: str = "INFO") -> None:
        with conn.transaction():
            conn.execute(
                "INSERT INTO job_logs (job_id, timestamp, level, message) VALUES (%s, %s, %s, %s)",
                (job_id, time.time(), level, message),
            )
            _notify(conn, CHANGED, job_id)

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

    def _finish(self, conn, job_id, status, result, error, lease, only_queued, usage=None) -> bool:
        statuses = [QUEUED] if only_queued else [QUEUED, RUNNING]
        with conn.transaction():
            changed = conn.execute(
                "UPDATE jobs SET status = %s, finished_at = %s, result = %s, error = %s, lease = NULL"
                " WHERE id = %s AND status = ANY(%s) AND (%s::text IS NULL OR lease = %s)",
                (status.value, time.time(), _dump(result), _dump(error), job_id, statuses, lease, lease),
            ).rowcount
            if changed:
                conn.execute("DELETE FROM job_inputs WHERE job_id = %s", (job_id,))
                conn.execute("DELETE FROM job_progress WHERE job_id = %s", (job_id,))
                _notify(conn, CHANGED, job_id)
            if changed and usage is not None:
                conn.execute(
                    "INSERT INTO usage_ledger VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (usage.job_id, usage.owner, usage.model, usage.finished_at, usage.images,
                     usage.megapixels, usage.engine_seconds, usage.cost_usd),
                )  # fmt: skip
        return bool(changed)

    # --- the queue -------------------------------------------------------------------------------------

    async def claim(self, model: str, *, max_images: int, lease_s: float, ready_before: float) -> Claim:
        return await self._run(self._claim, model, max_images, lease_s, ready_before)

    def _claim(self, conn, model: str, max_images: int, lease_s: float, ready_before: float) -> Claim:
        with conn.transaction():
            first = conn.execute(
                "SELECT batch_key, COALESCE(queued_at, created_at) FROM jobs WHERE model = %s AND status = %s"
                f" {_ORDER} LIMIT 1 FOR UPDATE SKIP LOCKED",
                (model, QUEUED),
            ).fetchone()
            if first is None:
                return Claim(None, [])
            key, oldest = first
            rows = conn.execute(  # the first job again (locked by us already), then its companions
                "SELECT id, num_images FROM jobs WHERE model = %s AND status = %s AND batch_key = %s"
                f" {_ORDER} LIMIT %s FOR UPDATE SKIP LOCKED",
                (model, QUEUED, key, max(max_images, 1)),
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
            conn.execute(
                "UPDATE jobs SET status = %s, started_at = %s, attempts = attempts + 1, lease = %s,"
                " lease_expires_at = %s WHERE id = ANY(%s)",
                (RUNNING, now, lease, now + lease_s, ids),
            )
            query = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY(%s) {_ORDER}"
            rows = conn.execute(query, (ids,)).fetchall()
            _notify_each(conn, CHANGED, ids)
        return Claim(lease, [job_from_row(row, []) for row in rows])  # without logs: a worker needs none

    async def inputs(self, job_id: str) -> bytes | None:
        return await self._run(self._inputs, job_id)

    def _inputs(self, conn, job_id: str) -> bytes | None:
        row = conn.execute("SELECT data FROM job_inputs WHERE job_id = %s", (job_id,)).fetchone()
        return None if row is None else bytes(row[0])

    async def renew(self, lease: str, lease_s: float) -> set[str]:
        return await self._run(self._renew, lease, lease_s)

    def _renew(self, conn, lease: str, lease_s: float) -> set[str]:
        rows = conn.execute(
            "UPDATE jobs SET lease_expires_at = %s WHERE lease = %s AND status = %s RETURNING id",
            (time.time() + lease_s, lease, RUNNING),
        ).fetchall()
        return {row[0] for row in rows}

    async def release(self, lease: str) -> list[str]:
        return await self._run(self._release, lease)

    def _release(self, conn, lease: str) -> list[str]:
        with conn.transaction():
            ids = _ids(conn, f"SELECT id FROM jobs WHERE lease = %s AND status = %s {_ORDER} FOR UPDATE",
                       (lease, RUNNING))  # fmt: skip
            for job_id in ids:
                self._requeue(conn, job_id, "the server stopped before this job finished; queued again", 0)
        return ids

    async def cancel(self, job_id: str, error: dict) -> str | None:
        return await self._run(self._cancel, job_id, error)

    def _cancel(self, conn, job_id: str, error: dict) -> str | None:
        with conn.transaction():
            row = conn.execute("SELECT status FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
            if row is None:
                return None
            if row[0] not in (QUEUED, RUNNING):
                return "finished"
            self._finish(conn, job_id, JobStatus.CANCELLED, None, error, None, False)
            self._log(conn, job_id, f"cancelled: {error['message']}")
        return "cancelled"

    async def requeue_expired(self, before: float, max_attempts: int) -> tuple[list[str], list[str]]:
        return await self._run(self._requeue_expired, before, max_attempts)

    def _requeue_expired(self, conn, before: float, max_attempts: int) -> tuple[list[str], list[str]]:
        requeued, failed = [], []
        with conn.transaction():
            rows = conn.execute(  # a lease being renewed right now is locked by its renewal: skipped
                "SELECT id, detached, attempts FROM jobs WHERE status = %s AND lease_expires_at < %s"
                f" {_ORDER} FOR UPDATE SKIP LOCKED",
                (RUNNING, before),
            ).fetchall()
            for job_id, detached, attempts in rows:
                if detached and attempts < max_attempts:
                    message = (f"attempt {attempts} of {max_attempts} was interrupted (its worker stopped);"
                               " queued again")  # fmt: skip
                    self._requeue(conn, job_id, message, 1)
                    requeued.append(job_id)
                else:
                    error = gave_up(attempts) if detached else INTERRUPTED
                    self._finish(conn, job_id, JobStatus.FAILED, None, error, None, False)
                    self._log(conn, job_id, f"failed: {error['message']}", "ERROR")
                    failed.append(job_id)
        return requeued, failed

    def _requeue(self, conn, job_id: str, message: str, counted: int) -> None:
        (model,) = conn.execute(
            "UPDATE jobs SET status = %s, lease = NULL, lease_expires_at = NULL, attempts = attempts - %s"
            " WHERE id = %s RETURNING model",
            (QUEUED, 1 - counted, job_id),
        ).fetchone()
        conn.execute("DELETE FROM job_progress WHERE job_id = %s", (job_id,))
        self._log(conn, job_id, message, "WARNING")
        _notify(conn, CLAIMABLE, model)

    async def fail_waiting(self) -> list[str]:
        return await self._run(self._fail_waiting)

    def _fail_waiting(self, conn) -> list[str]:
        with conn.transaction():
            ids = _ids(conn, f"SELECT id FROM jobs WHERE status = %s AND NOT detached {_ORDER} FOR UPDATE",
                       (QUEUED,))  # fmt: skip
            for job_id in ids:
                self._finish(conn, job_id, JobStatus.FAILED, None, INTERRUPTED, None, False)
                self._log(conn, job_id, f"failed: {INTERRUPTED['message']}", "ERROR")
        return ids

    async def queue_depth(self, model: str) -> int:
        return await self._run(_depth, model)

    async def queue_position(self, job_id: str) -> int | None:
        return await self._run(self._position, job_id)

    def _position(self, conn, job_id: str) -> int | None:
        row = conn.execute(
            "SELECT model, created_at, seq FROM jobs WHERE id = %s AND status = %s", (job_id, QUEUED)
        ).fetchone()
        if row is None:
            return None
        return conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE model = %s AND status = %s AND (created_at, seq) < (%s, %s)",
            (row[0], QUEUED, row[1], row[2]),
        ).fetchone()[0]

    # --- retention -----------------------------------------------------------------------------------

    async def expired(self, before: float) -> list[Job]:
        return await self._run(self._expired, before)

    def _expired(self, conn, before: float) -> list[Job]:
        conn.execute("DELETE FROM inline_images WHERE keep_until <= %s", (time.time(),))
        rows = conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE created_at < %s AND status <> ALL(%s) {_ORDER}",
            (before, [QUEUED, RUNNING]),
        ).fetchall()
        return [job_from_row(row, []) for row in rows]

    async def delete(self, job_ids: list[str]) -> None:
        await self._run(self._delete, job_ids)

    def _delete(self, conn, job_ids: list[str]) -> None:
        with conn.transaction():
            for table in ("job_logs", "job_inputs", "inline_images", "job_progress", "webhooks"):
                conn.execute(f"DELETE FROM {table} WHERE job_id = ANY(%s)", (job_ids,))
            conn.execute("DELETE FROM jobs WHERE id = ANY(%s)", (job_ids,))

    # --- signals and progress ----------------------------------------------------------------------------

    async def wait_queued(self, model: str, timeout: float) -> None:
        await self._signals.wait(CLAIMABLE, model, timeout)

    async def wait_changed(self, job_id: str, timeout: float) -> None:
        await self._signals.wait(CHANGED, job_id, timeout)

    def _listen(self, listening: threading.Event) -> None:
        """The listener thread: LISTEN on one connection, wake this store's waiters on each notification.
        After a lost connection it reconnects and wakes every waiter (notifications may have been missed)."""
        while not self._closed:
            try:
                with self._connect() as conn:
                    for channel in (*_CHANNELS, self._stop_channel):
                        conn.execute(f"LISTEN {channel}")
                    listening.set()
                    while not self._closed:
                        for note in conn.notifies(timeout=60):
                            if note.channel in _CHANNELS:
                                self._signals.notify(_CHANNELS[note.channel], note.payload or None)
                            elif self._closed:
                                return
            except (self._psycopg.Error, DatabaseUnavailable):
                if self._closed:
                    return
                self._signals.notify(CLAIMABLE, None)
                self._signals.notify(CHANGED, None)
                time.sleep(1)

    async def record_progress(
        self, job_id: str, lease: str, step: int, total: int, previews: list[bytes]
    ) -> bool:
        return await self._run(self._record_progress, job_id, lease, step, total, previews)

    def _record_progress(self, conn, job_id: str, lease: str, step: int, total: int, previews) -> bool:
        with conn.transaction():
            held = conn.execute(  # FOR SHARE: a concurrent end waits for this write, or this sees the end
                "SELECT 1 FROM jobs WHERE id = %s AND lease = %s AND status = %s FOR SHARE",
                (job_id, lease, RUNNING),
            ).fetchone()
            if held is None:
                return False
            conn.execute(
                "INSERT INTO job_progress VALUES (%s, %s, %s, %s::bytea[], %s) ON CONFLICT (job_id) DO UPDATE"
                " SET step = EXCLUDED.step, total = EXCLUDED.total, previews = EXCLUDED.previews,"
                " at = EXCLUDED.at",
                (job_id, step, total, list(previews), time.time()),
            )
            _notify(conn, CHANGED, job_id)
        return True

    async def progress(self, job_id: str) -> Progress | None:
        return await self._run(self._progress, job_id)

    def _progress(self, conn, job_id: str) -> Progress | None:
        row = conn.execute(
            "SELECT step, total, previews, at FROM job_progress WHERE job_id = %s", (job_id,)
        ).fetchone()
        return None if row is None else Progress(row[0], row[1], [bytes(p) for p in row[2]], row[3])

    # --- closing -----------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._shut_down)

    def _shut_down(self) -> None:
        try:
            with self._connect() as conn:
                conn.execute("SELECT pg_notify(%s, '')", (self._stop_channel,))
        except DatabaseUnavailable:
            pass  # the listener's connection is gone too: it sees _closed when it gives up
        self._listener.join(timeout=10)
        self._pool.shutdown(wait=True)
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()


def _depth(conn, model: str) -> int:
    query = "SELECT COUNT(*) FROM jobs WHERE model = %s AND status = %s"
    return conn.execute(query, (model, QUEUED)).fetchone()[0]


def _ids(conn, sql: str, args: tuple) -> list[str]:
    return [row[0] for row in conn.execute(sql, args).fetchall()]


def _notify(conn, topic: str, key: str) -> None:
    payload = key if len(key.encode()) <= _MAX_PAYLOAD else ""
    conn.execute("SELECT pg_notify(%s, %s)", (_CHANNEL[topic], payload))


def _notify_each(conn, topic: str, keys: list[str]) -> None:
    for key in keys:
        _notify(conn, topic, key)


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


def _dump(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value)
