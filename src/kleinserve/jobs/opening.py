"""open_job_store(settings): the job store a process uses, from --database-url.

None (the default) is the embedded SQLite file in the data directory, locked to this process; a
postgresql:// URL is a PostgreSQL database that several processes (API servers, workers) share. The
PostgreSQL store is imported only then: its driver comes with the `scale` extra.
"""

from __future__ import annotations

from kleinserve.jobs.contract import JobStore
from kleinserve.settings import Settings


def open_job_store(settings: Settings) -> JobStore:
    if settings.database_url:
        from kleinserve.jobs.postgres.store import PostgresJobStore

        return PostgresJobStore(settings.database_url)
    from kleinserve.jobs.sqlite.store import SQLiteJobStore

    return SQLiteJobStore(settings.database_path)
