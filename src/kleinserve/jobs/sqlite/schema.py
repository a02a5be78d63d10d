"""The embedded job store's first schema (migration 1, jobs/migrations.py), and how a database made before
schema versions existed becomes version 1.
"""

from __future__ import annotations

from kleinserve.jobs.database import Database

# Migration 1: the tables as the last release without versions made them (the jobs columns after `error`
# were added to older databases by ALTER TABLE, in this order).
FIRST_TABLES = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    params TEXT NOT NULL,
    result TEXT,
    error TEXT,
    owner TEXT,
    batch_key TEXT NOT NULL DEFAULT '',
    num_images INTEGER NOT NULL DEFAULT 1,
    detached INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease TEXT,
    lease_expires_at REAL,
    queued_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (model, status, created_at);
CREATE TABLE IF NOT EXISTS job_logs (
    job_id TEXT NOT NULL,
    timestamp REAL NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_logs_job ON job_logs (job_id);
CREATE TABLE IF NOT EXISTS job_inputs (job_id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS inline_images (
    job_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    data BLOB NOT NULL,
    keep_until REAL NOT NULL,
    PRIMARY KEY (job_id, position)
);
CREATE TABLE IF NOT EXISTS job_progress (
    job_id TEXT PRIMARY KEY,
    step INTEGER NOT NULL,
    total INTEGER NOT NULL,
    previews BLOB NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    models TEXT NOT NULL,
    started_at REAL NOT NULL,
    seen_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS request_samples (
    at REAL NOT NULL,
    model TEXT NOT NULL,
    seconds REAL NOT NULL,
    ttfb REAL NOT NULL,
    status INTEGER NOT NULL,
    images INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS request_samples_at ON request_samples (at);
CREATE TABLE IF NOT EXISTS usage (
    job_id TEXT PRIMARY KEY,
    owner TEXT,
    model TEXT NOT NULL,
    finished_at REAL NOT NULL,
    images INTEGER NOT NULL,
    megapixels REAL NOT NULL,
    engine_seconds REAL NOT NULL,
    cost_usd REAL
);
CREATE INDEX IF NOT EXISTS usage_finished ON usage (finished_at);
CREATE TABLE IF NOT EXISTS webhooks (
    job_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    lease_expires_at REAL,
    done INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS webhooks_pending ON webhooks (done)
"""

# The jobs columns the releases before versions added to databases made before them, in the order added.
_COLUMNS_ADDED = {
    "owner": "TEXT",
    "batch_key": "TEXT NOT NULL DEFAULT ''",
    "num_images": "INTEGER NOT NULL DEFAULT 1",
    "detached": "INTEGER NOT NULL DEFAULT 0",
    "attempts": "INTEGER NOT NULL DEFAULT 0",
    "lease": "TEXT",
    "lease_expires_at": "REAL",
    "queued_at": "REAL",  # when the store took it: a batch's wait for company counts from here
}


def adopt_unversioned(db: Database) -> None:
    """A database made before schema versions (a `jobs` table, no `kleinserve_schema`), whichever of those
    releases made it, gets the columns and tables they added since, and is marked version 1."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "jobs" not in tables or "kleinserve_schema" in tables:
        return
    with db.transaction():
        columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
        for column, kind in _COLUMNS_ADDED.items():
            if column not in columns:
                db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
        for statement in FIRST_TABLES.split(";"):
            db.execute(statement)
        db.execute("CREATE TABLE kleinserve_schema (version INTEGER NOT NULL)")
        db.execute("INSERT INTO kleinserve_schema VALUES (1)")
