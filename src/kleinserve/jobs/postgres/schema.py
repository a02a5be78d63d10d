"""The PostgreSQL job store's first schema (migration 1, jobs/migrations.py).

Times are epoch seconds in double precision, as in SQLite, so a job's record reads back the same from either
store; `seq` keeps insertion order where SQLite has its rowid.
"""

from __future__ import annotations

# Migration 1: the tables as the releases before migrations made them (then "schema version 1").
FIRST_TABLES = """
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
CREATE INDEX IF NOT EXISTS webhooks_pending ON webhooks (job_id) WHERE NOT done
"""
