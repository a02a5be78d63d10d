"""The seam between the queue's rules (queue_policy.py, side_tables.py, migrations.py) and a backend: what a
backend hands each call, so that the SQL and the logic are written once.

SQL is written with `?` placeholders in the subset SQLite and PostgreSQL share (row values, RETURNING,
ON CONFLICT upserts, NULLS FIRST); the few places the two differ are asked of the backend here: its
insertion-order column, its row locks, its date arithmetic, how it stores a list of previews, and how it
notifies waiters. Each backend supplies its connections and transactions: SQLite one writer thread
(sqlite/store.py), PostgreSQL one connection per pool thread (postgres/store.py).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol

RowLock = Literal["update", "skip", "share"]


class Database(Protocol):
    """One backend's handle on its database, given to each call of the queue's rules."""

    backend: str  # "sqlite" | "postgres": which statements of a migration apply
    seq: str  # the column that keeps insertion order among rows made at the same instant
    utc_day: str  # SQL: the usage ledger's finished_at as its UTC day, "YYYY-MM-DD"
    previews_param: str  # the placeholder for a list of previews, as pack_previews gives it

    def execute(self, sql: str, args: tuple | list = ()) -> Any:
        """Run one statement; a cursor (fetchone, fetchall, rowcount)."""

    def executemany(self, sql: str, rows: list[tuple]) -> None: ...

    def transaction(self) -> AbstractContextManager:
        """A transaction; nested in the caller's when one is open."""

    def notify(self, topic: str, key: str) -> None:
        """Wake the waiters on (topic, key) (jobs/signals.py) once what this transaction changed is seen."""

    def lock(self, kind: RowLock, of: str = "") -> str:
        """The clause that ends a SELECT whose rows this transaction goes on to change: "update" locks them,
        "skip" skips rows another transaction holds, "share" keeps them from changing meanwhile; `of` names
        the one table (alias) of a join to lock. Empty where one writer at a time is the only lock."""

    def serialize(self, name: str) -> None:
        """From here to the end of the transaction, no other process passes `serialize(name)`."""

    def pack_previews(self, previews: list[bytes]) -> Any: ...
    def unpack_previews(self, value: Any) -> list[bytes]: ...
