"""A PostgreSQL job database made before numbered migrations (schema version 1) opens with today's store and
keeps its rows. The DDL below is jobs/postgres/schema.py's as of commit 587aa10, copied verbatim: a record
of the past, never to be changed."""

import asyncio

import psycopg

from kleinserve.job import JobStatus
from kleinserve.jobs.migrations import SCHEMA_VERSION
from kleinserve.jobs.postgres.store import PostgresJobStore

from support.postgres_server import database_url, postgres_server  # noqa: F401 (fixtures)
from support.store_contract import MODEL, claim, run

VERSION_1 = """
CREATE TABLE IF NOT EXISTS kleinserve_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq BIGSERIAL NOT NULL UNIQUE,
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    params TEXT NOT NULL,
    result TEXT,
    error TEXT,
    owner TEXT,
    batch_key TEXT NOT NULL DEFAULT '',
    num_images INTEGER NOT NULL DEFAULT 1,
    detached BOOLEAN NOT NULL DEFAULT FALSE,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease TEXT,
    lease_expires_at DOUBLE PRECISION,
    queued_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (model, status, created_at, seq);
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (lease) WHERE lease IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created_at);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE TABLE IF NOT EXISTS job_logs (
    seq BIGSERIAL PRIMARY KEY,
    job_id TEXT NOT NULL,
    timestamp DOUBLE PRECISION NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_logs_job ON job_logs (job_id, seq);
CREATE TABLE IF NOT EXISTS job_inputs (job_id TEXT PRIMARY KEY, data BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS inline_images (
    job_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    data BYTEA NOT NULL,
    keep_until DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, position)
);
CREATE TABLE IF NOT EXISTS job_progress (
    job_id TEXT PRIMARY KEY,
    step INTEGER NOT NULL,
    total INTEGER NOT NULL,
    previews BYTEA[] NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    models TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    seen_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS usage_ledger (
    job_id TEXT PRIMARY KEY,
    owner TEXT,
    model TEXT NOT NULL,
    finished_at DOUBLE PRECISION NOT NULL,
    images INTEGER NOT NULL,
    megapixels DOUBLE PRECISION NOT NULL,
    engine_seconds DOUBLE PRECISION NOT NULL,
    cost_usd DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS usage_ledger_finished ON usage_ledger (finished_at);
CREATE TABLE IF NOT EXISTS request_samples (
    seq BIGSERIAL PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    model TEXT NOT NULL,
    seconds DOUBLE PRECISION NOT NULL,
    ttfb DOUBLE PRECISION NOT NULL,
    status INTEGER NOT NULL,
    images INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS request_samples_at ON request_samples (at);
CREATE TABLE IF NOT EXISTS webhooks (
    job_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    lease_expires_at DOUBLE PRECISION,
    done BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX IF NOT EXISTS webhooks_pending ON webhooks (job_id) WHERE NOT done;
"""

ROWS = """
INSERT INTO kleinserve_schema VALUES (1);
INSERT INTO jobs (id, model, status, created_at, started_at, finished_at, params, result, error, owner,
                  batch_key, num_images, detached, attempts, queued_at)
VALUES ('done', 'flux.2-klein-4b', 'succeeded', 100.0, 101.0, 102.0, '{"prompt": "a fox"}', '{"images": []}',
        NULL, 'key-1', '', 1, TRUE, 1, 100.0),
       ('waiting', 'flux.2-klein-4b', 'queued', 103.0, NULL, NULL, '{"prompt": "a cat"}', NULL, NULL, 'key-1',
        '', 2, TRUE, 0, 103.0);
INSERT INTO job_logs (job_id, timestamp, level, message) VALUES ('done', 100.0, 'INFO', 'queued');
INSERT INTO job_inputs VALUES ('waiting', '\\x00');
INSERT INTO usage_ledger VALUES ('done', 'key-1', 'flux.2-klein-4b', 102.0, 1, 1.05, 0.5, 0.01);
"""


def test_a_version_1_database_opens_and_keeps_its_rows(database_url):  # noqa: F811
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(VERSION_1)
        conn.execute(ROWS)

    async def scenario():
        store = PostgresJobStore(database_url)
        try:
            done, usage = await store.get("done"), await store.usage_by_day("key-1")
            return done, usage, await claim(store)
        finally:
            await store.close()

    done, usage, taken = run(scenario())
    assert done.status is JobStatus.SUCCEEDED and done.params == {"prompt": "a fox"}
    assert [entry["message"] for entry in done.logs] == ["queued"]
    assert [(row["model"], row["requests"], row["cost_usd"]) for row in usage] == [(MODEL, 1, 0.01)]
    assert [job.id for job in taken.jobs] == ["waiting"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM kleinserve_schema ORDER BY version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    asyncio.run(PostgresJobStore(database_url).close())  # and it opens again as it is
