"""Databases made before numbered migrations open with today's SQLite store and keep their rows. The DDL
below is what the releases that made them ran (jobs/sqlite/schema.py as of commit 587aa10: its tables, then
the ad-hoc ALTER TABLEs that brought any earlier `jobs` table up to date; columns as there, layout
compacted); it is a record of the past, never to be changed."""

import asyncio
import sqlite3

import pytest

from kleinserve.job import JobStatus
from kleinserve.jobs.migrations import SCHEMA_VERSION, NewerSchema
from kleinserve.jobs.sqlite.store import SQLiteJobStore

from support.store_contract import MODEL, claim, run

# The first release: a `jobs` table without the columns added later, its logs and its inputs.
FIRST_RELEASE = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    params TEXT NOT NULL,
    result TEXT,
    error TEXT
);
CREATE INDEX jobs_status ON jobs (status);
CREATE INDEX jobs_created ON jobs (created_at);
CREATE TABLE job_logs (
    job_id TEXT NOT NULL, timestamp REAL NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL
);
CREATE INDEX job_logs_job ON job_logs (job_id);
CREATE TABLE job_inputs (job_id TEXT PRIMARY KEY, data BLOB NOT NULL);
INSERT INTO jobs VALUES ('done', 'flux.2-klein-4b', 'succeeded', 100.0, 101.0, 102.0, '{"prompt": "a fox"}',
                         '{"images": []}', NULL);
INSERT INTO jobs VALUES ('waiting', 'flux.2-klein-4b', 'queued', 103.0, NULL, NULL, '{"prompt": "a cat"}',
                         NULL, NULL);
INSERT INTO job_logs VALUES ('done', 100.0, 'INFO', 'queued');
INSERT INTO job_inputs VALUES ('waiting', x'00');
"""

# The last release before migrations: every table, the `jobs` columns its ALTER TABLEs added, and `usage`.
LAST_UNVERSIONED = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    params TEXT NOT NULL,
    result TEXT,
    error TEXT
);
CREATE INDEX jobs_status ON jobs (status);
CREATE INDEX jobs_created ON jobs (created_at);
CREATE TABLE job_logs (
    job_id TEXT NOT NULL, timestamp REAL NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL
);
CREATE INDEX job_logs_job ON job_logs (job_id);
CREATE TABLE job_inputs (job_id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE inline_images (
    job_id TEXT NOT NULL, position INTEGER NOT NULL, data BLOB NOT NULL, keep_until REAL NOT NULL,
    PRIMARY KEY (job_id, position)
);
CREATE TABLE job_progress (
    job_id TEXT PRIMARY KEY, step INTEGER NOT NULL, total INTEGER NOT NULL, previews BLOB NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE workers (
    id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, models TEXT NOT NULL,
    started_at REAL NOT NULL, seen_at REAL NOT NULL
);
CREATE TABLE request_samples (
    at REAL NOT NULL, model TEXT NOT NULL, seconds REAL NOT NULL, ttfb REAL NOT NULL, status INTEGER NOT NULL,
    images INTEGER NOT NULL
);
CREATE INDEX request_samples_at ON request_samples (at);
CREATE TABLE usage (
    job_id TEXT PRIMARY KEY, owner TEXT, model TEXT NOT NULL, finished_at REAL NOT NULL,
    images INTEGER NOT NULL, megapixels REAL NOT NULL, engine_seconds REAL NOT NULL, cost_usd REAL
);
CREATE INDEX usage_finished ON usage (finished_at);
CREATE TABLE webhooks (
    job_id TEXT PRIMARY KEY, url TEXT NOT NULL, lease_expires_at REAL, done INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX webhooks_pending ON webhooks (done);
ALTER TABLE jobs ADD COLUMN owner TEXT;
ALTER TABLE jobs ADD COLUMN batch_key TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN num_images INTEGER NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN detached INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN lease TEXT;
ALTER TABLE jobs ADD COLUMN lease_expires_at REAL;
ALTER TABLE jobs ADD COLUMN queued_at REAL;
CREATE INDEX jobs_queue ON jobs (model, status, created_at);
INSERT INTO jobs VALUES ('done', 'flux.2-klein-4b', 'succeeded', 100.0, 101.0, 102.0, '{"prompt": "a fox"}',
                         '{"images": []}', NULL, 'key-1', '', 1, 1, 1, NULL, NULL, 100.0);
INSERT INTO jobs VALUES ('waiting', 'flux.2-klein-4b', 'queued', 103.0, NULL, NULL, '{"prompt": "a cat"}',
                         NULL, NULL, 'key-1', '', 2, 1, 0, NULL, NULL, 103.0);
INSERT INTO job_logs VALUES ('done', 100.0, 'INFO', 'queued');
INSERT INTO job_inputs VALUES ('waiting', x'00');
INSERT INTO usage VALUES ('done', 'key-1', 'flux.2-klein-4b', 102.0, 1, 1.05, 0.5, 0.01);
INSERT INTO request_samples VALUES (102.0, 'flux.2-klein-4b', 2.0, 0.1, 200, 1);
INSERT INTO workers VALUES ('w1', 'host', 7, '{}', 90.0, 102.0);
INSERT INTO webhooks VALUES ('done', 'https://example.com/hook', NULL, 0);
"""


def _old_database(path, ddl):
    db = sqlite3.connect(path)
    db.executescript(ddl)
    db.close()


def _versions(path):
    db = sqlite3.connect(path)
    try:
        versions = [row[0] for row in db.execute("SELECT version FROM kleinserve_schema ORDER BY version")]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()
    return versions, tables


@pytest.mark.parametrize("ddl", [FIRST_RELEASE, LAST_UNVERSIONED], ids=["first-release", "last-unversioned"])
def test_a_database_from_before_migrations_opens_and_keeps_its_rows(tmp_path, ddl):
    path = tmp_path / "jobs.sqlite3"
    _old_database(path, ddl)

    async def scenario():
        store = SQLiteJobStore(path)
        try:
            done, waiting = await store.get("done"), await store.get("waiting")
            taken = await claim(store)
            return done, waiting, taken, await store.recent(done.owner, JobStatus.SUCCEEDED)
        finally:
            await store.close()

    done, waiting, taken, recent = run(scenario())
    assert done.status is JobStatus.SUCCEEDED and done.params == {"prompt": "a fox"}
    assert done.result == {"images": []} and [entry["message"] for entry in done.logs] == ["queued"]
    assert waiting.status is JobStatus.QUEUED and waiting.model == MODEL
    assert [job.id for job in taken.jobs] == ["waiting"]  # the queue still works on the old rows
    assert [job.id for job in recent] == ["done"]
    versions, tables = _versions(path)
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert "usage_ledger" in tables and "usage" not in tables


def test_the_last_unversioned_side_tables_keep_their_rows(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    _old_database(path, LAST_UNVERSIONED)

    async def scenario():
        store = SQLiteJobStore(path)
        try:
            usage = await store.usage_by_day("key-1")
            return (
                usage,
                await store.samples(0),
                await store.workers(0),
                await store.claim_webhooks(limit=10, lease_s=30),
            )
        finally:
            await store.close()

    usage, samples, workers, webhooks = run(scenario())
    assert usage == [
        {"day": "1970-01-01", "owner": "key-1", "model": MODEL, "requests": 1, "images": 1,
         "megapixels": 1.05, "engine_seconds": 0.5, "cost_usd": 0.01}
    ]  # fmt: skip
    assert [(s.model, s.status) for s in samples] == [(MODEL, 200)]
    assert [w.id for w in workers] == ["w1"]
    assert webhooks == ["done"]


def test_a_new_database_is_at_the_latest_version_and_reopens_unchanged(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    asyncio.run(SQLiteJobStore(path).close())
    asyncio.run(SQLiteJobStore(path).close())
    versions, tables = _versions(path)
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert {"jobs", "job_logs", "job_inputs", "usage_ledger", "webhooks", "workers"} <= tables


def test_a_database_from_a_newer_kleinserve_is_refused(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    asyncio.run(SQLiteJobStore(path).close())
    db = sqlite3.connect(path)
    with db:
        db.execute("INSERT INTO kleinserve_schema VALUES (?)", (SCHEMA_VERSION + 1,))
    db.close()
    with pytest.raises(NewerSchema, match="made by a newer kleinserve"):
        SQLiteJobStore(path)
