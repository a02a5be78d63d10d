"""The PostgreSQL job store: one queue shared by several processes (API servers, workers). The queue's rules
are queue_policy.py's and side_tables.py's; this module supplies connections, transactions, row locks and
LISTEN/NOTIFY.

A claim locks its jobs with FOR UPDATE SKIP LOCKED, so concurrent workers never take the same job and never
wait for each other. Writers NOTIFY in the same transaction (delivered at commit): "kleinserve_claimable"
with the model when work may be claimable, "kleinserve_changed" with the job id on every change of a job;
one LISTEN connection per store wakes its waiters (jobs/signals.py), whose timeout is the polling backstop.

Calls run synchronous psycopg connections on a small thread pool, one connection per thread: as with the
SQLite store, the event loop never waits on the database and a store opened under one event loop serves
another. psycopg comes with the `scale` extra; the default install never imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from urllib.parse import urlsplit

from kleinserve.errors import DatabaseUnavailable
from kleinserve.jobs.database import RowLock
from kleinserve.jobs.migrations import migrate
from kleinserve.jobs.queue_policy import QueuePolicy
from kleinserve.jobs.side_tables import SideTables
from kleinserve.jobs.signals import CHANGED, CLAIMABLE, Signals
from kleinserve.jobs.uploads import Uploads

_CHANNELS = {"kleinserve_claimable": CLAIMABLE, "kleinserve_changed": CHANGED}
_CHANNEL = {topic: channel for channel, topic in _CHANNELS.items()}
_MAX_PAYLOAD = 7999  # bytes; PostgreSQL refuses 8000 and more (an empty payload wakes the whole topic)
APPLICATION = f"kleinserve pid {os.getpid()}"  # pg_stat_activity.application_name of its connections

log = logging.getLogger("kleinserve")

__all__ = ["DatabaseUnavailable", "PostgresJobStore"]


class PostgresDatabase:
    """The `Database` (jobs/database.py) over one pool thread's connection (autocommit between
    transactions); SQL's `?` placeholders become psycopg's `%s`."""

    backend = "postgres"
    seq = "seq"
    utc_day = "to_char(to_timestamp(finished_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    previews_param = "?::bytea[]"

    def __init__(self, connection):
        self.connection = connection

    def execute(self, sql: str, args: tuple | list = ()):
        return self.connection.execute(sql.replace("?", "%s"), args or None)

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        with self.connection.cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), rows)

    def transaction(self):
        """Nested in the caller's when one is open, as on SQLite (psycopg would make a SAVEPOINT: two more
        round trips, and no caller here rolls back part of a transaction)."""
        if self.connection.info.transaction_status.name != "IDLE":
            return contextlib.nullcontext()
        return self.connection.transaction()

    def notify(self, topic: str, key: str) -> None:
        payload = key if len(key.encode()) <= _MAX_PAYLOAD else ""
        self.execute("SELECT pg_notify(?, ?)", (_CHANNEL[topic], payload))

    def lock(self, kind: RowLock, of: str = "") -> str:
        of = f" OF {of}" if of else ""
        return {
            "update": f"FOR UPDATE{of}",
            "skip": f"FOR UPDATE{of} SKIP LOCKED",
            "share": f"FOR SHARE{of}",
        }[kind]

    def serialize(self, name: str) -> None:
        self.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (name,))

    def pack_previews(self, previews: list[bytes]) -> list[bytes]:
        return list(previews)

    def unpack_previews(self, value: list) -> list[bytes]:
        return [bytes(preview) for preview in value]


STALL_TIMEOUT_S = 10.0  # idle_in_transaction_session_timeout of every connection a store opens


class PostgresJobStore(QueuePolicy, SideTables, Uploads):
    """`stall_timeout_s`: how long PostgreSQL lets one of this store's transactions sit idle before it ends
    the session. No transaction here waits on anything but its own statements, so an idle one means the
    process stalled inside it (frozen, paused, cut off): it may hold job rows locked (a lease renewal
    locks its jobs), and while it does, the expired-lease requeue skips them (SKIP LOCKED). Ending the
    session releases them, so its jobs are requeued when their lease runs out."""

    def __init__(self, url: str, *, connections: int = 4, stall_timeout_s: float = STALL_TIMEOUT_S):
        try:
            import psycopg
        except ImportError:
            raise DatabaseUnavailable(
                "--database-url needs the PostgreSQL driver: pip install 'kleinserve[scale]'"
            ) from None
        self._psycopg = psycopg
        self._url = url
        self._stall_timeout_ms = max(1, round(stall_timeout_s * 1000))
        self._local = threading.local()
        self._connections: list = []
        self._connections_lock = threading.Lock()
        self.outage: str | None = None  # why the last call could not reach the database; None once one did
        with self._connect() as conn:
            migrate(PostgresDatabase(conn))
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
            conn = self._psycopg.connect(
                self._url, autocommit=True, connect_timeout=10, application_name=APPLICATION
            )
            conn.execute(  # a session setting rather than a startup option, which PgBouncer refuses
                "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                (str(self._stall_timeout_ms),),
            )
            return conn
        except self._psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"cannot reach the job database at {_safe(self._url)}: {exc}") from None

    def _connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._usable(conn):
            return conn
        fresh = self._local.conn = self._connect()
        with self._connections_lock:
            if conn is not None:
                self._connections.remove(conn)
                conn.close()
            self._connections.append(fresh)
        return fresh

    @staticmethod
    def _usable(conn) -> bool:
        """False for a pooled connection the server has ended while it sat idle (a PostgreSQL restart,
        pg_terminate_backend): without this check the first call after a restart would answer a 503 on each
        such connection although the database is back. The pool's connections LISTEN to nothing, so an idle
        one has something to read only when the server ended it (its "terminating connection" message):
        one select(), no round trip."""
        if conn.closed or conn.broken:
            return False
        return not select.select([conn.fileno()], [], [], 0)[0]

    async def _run(self, rule, *args):
        call = partial(self._call, rule, *args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def _call(self, rule, *args):
        """The one place a lost or refused connection becomes DatabaseUnavailable (the API's 503); the
        broken connection is replaced at the next call."""
        try:
            result = rule(PostgresDatabase(self._connection()), *args)
        except DatabaseUnavailable as exc:
            self._lost(str(exc))
            raise
        except (
            self._psycopg.OperationalError,
            self._psycopg.InterfaceError,
            self._psycopg.errors.IdleInTransactionSessionTimeout,  # this process stalled mid-transaction
        ) as exc:
            self._lost(f"the job database at {_safe(self._url)} went away: {exc}")
            raise DatabaseUnavailable(self.outage) from None
        if self.outage is not None:
            log.warning("the job database is reachable again")
            self.outage = None
        return result

    def _lost(self, reason: str) -> None:
        if self.outage is None:
            log.warning("%s", reason)
        self.outage = reason.strip()

    # --- signals -------------------------------------------------------------------------------------

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


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()
