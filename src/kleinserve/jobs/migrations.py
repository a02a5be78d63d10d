"""The job database's schema, as numbered migrations that both backends run the same way at open.

`kleinserve_schema` lists the versions a database has; opening one runs the migrations after its highest,
each in the same transaction as its version row, and refuses a database made by a newer kleinserve rather
than misread it. A migration is written once where its SQL is the same in both backends; the first one is
each backend's own (their column types differ). SQLite databases made before versions existed are brought
to version 1 first (sqlite/schema.py: adopt_unversioned). Add a migration at the end; never edit one that
has shipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from kleinserve.errors import KleinserveError
from kleinserve.jobs.database import Database
from kleinserve.jobs.postgres.schema import FIRST_TABLES as POSTGRES_FIRST
from kleinserve.jobs.sqlite.schema import FIRST_TABLES as SQLITE_FIRST


class NewerSchema(KleinserveError):
    """The job database was made by a newer kleinserve."""


@dataclass(frozen=True)
class Migration:
    version: int
    what: str
    sqlite: str  # statements separated by ";"
    postgres: str

    @classmethod
    def same(cls, version: int, what: str, sql: str) -> Migration:
        return cls(version, what, sql, sql)

    def statements(self, backend: str) -> list[str]:
        script = self.sqlite if backend == "sqlite" else self.postgres
        return [statement.strip() for statement in script.split(";") if statement.strip()]


UPLOADS_TABLE = """CREATE TABLE uploads (id TEXT PRIMARY KEY, owner TEXT, name TEXT NOT NULL,
 content_type TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL, md5 TEXT NOT NULL,
 metadata TEXT NOT NULL, storage_key TEXT NOT NULL, created_at {time} NOT NULL, expires_at {time} NOT NULL);
 CREATE INDEX uploads_owner ON uploads (owner, created_at);
 CREATE INDEX uploads_expiry ON uploads (expires_at)"""

MIGRATIONS = (
    Migration(1, "the tables as the releases before versions left them", SQLITE_FIRST, POSTGRES_FIRST),
    Migration(
        2,
        "the usage ledger is `usage_ledger` in both backends (SQLite called it `usage`)",
        sqlite="ALTER TABLE usage RENAME TO usage_ledger; DROP INDEX IF EXISTS usage_finished;"
        " CREATE INDEX IF NOT EXISTS usage_ledger_finished ON usage_ledger (finished_at)",
        postgres="",
    ),
    Migration.same(
        3,
        "an index for an owner's recent jobs in both (PostgreSQL had it from the start)",
        "CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created_at)",
    ),
    Migration(
        4,
        "uploaded files (Replicate's /v1/files): their records; the bytes are in the storage layer",
        sqlite=UPLOADS_TABLE.format(time="REAL"),
        postgres=UPLOADS_TABLE.format(time="DOUBLE PRECISION"),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def migrate(db: Database) -> None:
    """Bring the database to SCHEMA_VERSION (one process at a time); NewerSchema if it is past it."""
    with db.transaction():
        db.serialize("kleinserve schema")
        db.execute("CREATE TABLE IF NOT EXISTS kleinserve_schema (version INTEGER NOT NULL)")
        current = db.execute("SELECT max(version) FROM kleinserve_schema").fetchone()[0] or 0
        if current > SCHEMA_VERSION:
            raise NewerSchema(
                f"the job database has schema version {current}, made by a newer kleinserve than this one "
                f"(which knows version {SCHEMA_VERSION}); upgrade kleinserve"
            )
        for migration in MIGRATIONS[current:]:
            for statement in migration.statements(db.backend):
                db.execute(statement)
            db.execute("INSERT INTO kleinserve_schema VALUES (?)", (migration.version,))
