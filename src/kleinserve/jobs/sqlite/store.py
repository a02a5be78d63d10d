"""The embedded job store: one SQLite file under the data directory. The queue's rules are queue_policy.py's
and side_tables.py's; this module supplies the file, its one writer thread and its transactions.

Its calls run on one dedicated thread so the event loop never waits on disk, and that thread is the only
writer: it is what locks rows here (a claim and a renewal never interleave). While it is open the store
holds an exclusive lock on the data directory: two servers there would run each other's jobs, and being
alone is what lets a restart treat every running lease it finds as dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import sqlite3
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kleinserve.errors import KleinserveError
from kleinserve.jobs.database import RowLock
from kleinserve.jobs.migrations import migrate
from kleinserve.jobs.queue_policy import QueuePolicy
from kleinserve.jobs.side_tables import SideTables
from kleinserve.jobs.signals import Signals
from kleinserve.jobs.sqlite.schema import adopt_unversioned
from kleinserve.jobs.uploads import Uploads


class DataDirInUse(KleinserveError):
    """Another server already uses this job database."""


class SQLiteDatabase:
    """The `Database` (jobs/database.py) over the store's one connection, used on its one thread."""

    backend = "sqlite"
    seq = "rowid"
    utc_day = "date(finished_at, 'unixepoch')"
    previews_param = "?"

    def __init__(self, connection: sqlite3.Connection, signals: Signals):
        self.connection = connection
        self._signals = signals

    def execute(self, sql: str, args: tuple | list = ()) -> sqlite3.Cursor:
        return self.connection.execute(sql, args)

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        self.connection.executemany(sql, rows)

    @contextlib.contextmanager
    def transaction(self):
        if self.connection.in_transaction:  # nested: part of the caller's transaction
            yield
            return
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")

    def notify(self, topic: str, key: str) -> None:
        # At once: a woken waiter reads through this same thread, so after the transaction commits.
        self._signals.notify(topic, key)

    def lock(self, kind: RowLock, of: str = "") -> str:
        return ""  # one writer thread: nothing else changes a row meanwhile

    def serialize(self, name: str) -> None:
        pass  # BEGIN IMMEDIATE already holds the only write lock, and the data-dir lock keeps others out

    def pack_previews(self, previews: list[bytes]) -> bytes:
        """The previews in one blob: each after its 4-byte length."""
        return b"".join(_LENGTH.pack(len(blob)) + blob for blob in previews)

    def unpack_previews(self, data: bytes) -> list[bytes]:
        blobs, offset = [], 0
        while offset < len(data):
            (length,) = _LENGTH.unpack_from(data, offset)
            blobs.append(bytes(data[offset + 4 : offset + 4 + length]))
            offset += 4 + length
        return blobs


_LENGTH = struct.Struct(">I")


class SQLiteJobStore(QueuePolicy, SideTables, Uploads):
    outage = None  # a file in this process: reachable while the process runs (a full disk is StorageFull)

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _exclusive_lock(path.with_name(path.name + ".lock"))
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kleinserve-jobs")
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")  # readers never wait on the writer
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes, fast
        self._signals = Signals()  # within this process: the data-dir lock makes it the only one
        self._database = SQLiteDatabase(self._db, self._signals)
        adopt_unversioned(self._database)
        migrate(self._database)

    async def _run(self, rule, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, rule, self._database, *args)

    @property
    def closed(self) -> bool:
        return self._lock.closed

    async def close(self) -> None:
        if self.closed:
            return
        await asyncio.get_running_loop().run_in_executor(self._thread, self._db.close)
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
