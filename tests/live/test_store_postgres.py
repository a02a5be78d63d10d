"""The job store contract (store_contract.py), run against a real PostgreSQL; and what only a shared
database has: several stores (as several processes would hold) claiming from one queue, waking each other
with LISTEN/NOTIFY, and taking over a dead one's jobs."""

import asyncio
import time

import psycopg
import pytest

from kleinserve.job import JobStatus
from kleinserve.jobs.migrations import NewerSchema
from kleinserve.jobs.postgres.store import DatabaseUnavailable, PostgresJobStore

from support.postgres_server import database_url, postgres_server  # noqa: F401 (fixtures)
from support.store_contract import *  # noqa: F403 (the contract's tests run here)
from support.store_contract import MODEL, add, claim, queued_job, run


@pytest.fixture
def open_store(database_url):  # noqa: F811 (the fixture above)
    opened = []

    def open_store():
        store = PostgresJobStore(database_url)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        asyncio.run(store.close())


def test_concurrent_claims_never_share_a_job_and_together_take_all(open_store):
    async def scenario():
        first, second = open_store(), open_store()
        jobs = await add(first, *(queued_job(f"K{i % 5}") for i in range(60)))

        async def claim_all(store):
            taken = []
            while (claimed := await claim(store, max_images=3)).jobs:
                taken += [job.id for job in claimed.jobs]
            return taken

        return [job.id for job in jobs], await asyncio.gather(claim_all(first), claim_all(second))

    added, (by_first, by_second) = run(scenario())
    assert not set(by_first) & set(by_second)
    assert sorted(by_first + by_second) == sorted(added)
    assert by_first and by_second  # both took part


def test_a_waiter_in_one_store_is_woken_by_an_add_in_another(open_store):
    async def scenario():
        api, worker = open_store(), open_store()
        waiter = asyncio.ensure_future(worker.wait_queued(MODEL, 120))
        await asyncio.sleep(0)
        (job,) = await add(api, queued_job())
        await asyncio.wait_for(waiter, 60)  # woken by the notification, long before its own timeout
        changed = asyncio.ensure_future(api.wait_changed(job.id, 120))
        await asyncio.sleep(0)
        claimed = await claim(worker)
        await asyncio.wait_for(changed, 60)
        return job.id, [job.id for job in claimed.jobs]

    job_id, claimed = run(scenario())
    assert claimed == [job_id]


def test_a_dead_connections_lease_expires_and_another_store_runs_the_job(open_store, database_url):  # noqa: F811
    async def scenario():
        dead, alive = open_store(), open_store()
        (job,) = await add(dead, queued_job())
        lost = await dead.claim(MODEL, max_images=1, lease_s=0.2, ready_before=time.time() + 1)
        await _kill_connections(database_url, dead)
        while not (requeued := await alive.requeue_expired(time.time(), max_attempts=3))[0]:
            await alive.wait_queued(MODEL, 0.2)
        rerun = await claim(alive)
        late = await alive.finish(job.id, JobStatus.SUCCEEDED, result={"by": "dead"}, lease=lost.lease)
        done = await alive.finish(job.id, JobStatus.SUCCEEDED, result={"by": "alive"}, lease=rerun.lease)
        return job.id, requeued, [j.id for j in rerun.jobs], late, done, await alive.get(job.id)

    job_id, requeued, rerun, late, done, job = run(scenario())
    assert requeued == ([job_id], []) and rerun == [job_id]
    assert late is False and done is True
    assert job.result == {"by": "alive"} and job.attempts == 2


async def _kill_connections(url: str, store: PostgresJobStore) -> None:
    """Terminate the server end of a store's query connections, as if its process died."""
    pids = [conn.info.backend_pid for conn in store._connections]
    with psycopg.connect(url, autocommit=True) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_process_stalled_inside_a_transaction_does_not_keep_its_jobs_from_being_requeued(
    open_store, database_url  # noqa: F811
):
    """A worker frozen in the middle of a lease renewal holds its jobs' rows locked, and the requeue skips
    locked rows: PostgreSQL ends the stalled session after the store's stall timeout, so the requeue
    proceeds once the lease has run out."""
    async def scenario():
        stalled = PostgresJobStore(database_url, stall_timeout_s=1)
        alive = open_store()
        try:
            (job,) = await add(alive, queued_job())
            await stalled.claim(MODEL, max_images=1, lease_s=0.2, ready_before=time.time() + 1)
            frozen = stalled._connect()  # a connection as the store opens them, left inside a transaction
            frozen.execute("BEGIN")
            frozen.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job.id,))
            await asyncio.sleep(0.3)  # the lease has run out; the row is still locked
            locked_out = (await alive.requeue_expired(time.time(), max_attempts=3))[0]
            deadline = time.monotonic() + 30
            while not (requeued := (await alive.requeue_expired(time.time(), max_attempts=3))[0]):
                assert time.monotonic() < deadline, "the stalled transaction's lock was never released"
                await asyncio.sleep(0.2)
            with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):  # the server ended it
                frozen.execute("SELECT 1")
            # The store's own calls: one that stalls inside its transaction is DatabaseUnavailable (the
            # error the batcher retries within the lease), and the next call gets a fresh connection.
            with pytest.raises(DatabaseUnavailable, match="idle-in-transaction"):
                stalled._call(_stall_in_a_transaction, 1.5)
            assert stalled._call(lambda db: db.execute("SELECT 1").fetchone()) == (1,)
            return job.id, locked_out, requeued
        finally:
            await stalled.close()

    job_id, locked_out, requeued = run(scenario())
    assert locked_out == [] and requeued == [job_id]
    with psycopg.connect(database_url, autocommit=True) as conn:
        (setting,) = conn.execute(
            "SELECT setting FROM pg_settings WHERE name = 'idle_in_transaction_session_timeout'"
        ).fetchone()
    assert setting == "0"  # the stores set it on their own sessions, not for the whole server


def _stall_in_a_transaction(db, seconds: float) -> None:
    with db.transaction():
        db.execute("SELECT 1")
        time.sleep(seconds)
        db.execute("SELECT 1")


def test_an_unreachable_database_is_a_clear_error(postgres_server):  # noqa: F811
    url = f"postgresql://postgres@127.0.0.1:{postgres_server.port}/no_such_database"
    with pytest.raises(DatabaseUnavailable, match="cannot reach the job database at postgresql://"):
        PostgresJobStore(url)


def test_a_database_from_a_newer_kleinserve_is_refused(database_url):  # noqa: F811
    asyncio.run(PostgresJobStore(database_url).close())
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE kleinserve_schema SET version = version + 1")
    with pytest.raises(NewerSchema, match="made by a newer kleinserve"):
        PostgresJobStore(database_url)


def test_a_model_id_too_long_for_a_notification_still_wakes_its_waiter(open_store):
    model = "m" * 9000  # a NOTIFY payload must stay under 8000 bytes: this one wakes every waiter instead

    async def scenario():
        api, worker = open_store(), open_store()
        waiter = asyncio.ensure_future(worker.wait_queued(model, 120))
        await asyncio.sleep(0)
        await add(api, queued_job(model=model))
        await asyncio.wait_for(waiter, 60)
        return await api.queue_depth(model)

    assert run(scenario()) == 1


def test_the_listener_reconnects_after_losing_its_connection(open_store, database_url):  # noqa: F811
    async def scenario():
        api, worker = open_store(), open_store()
        first = _listeners(database_url)
        with psycopg.connect(database_url, autocommit=True) as admin:
            for pid in first:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        while len(set(_listeners(database_url)) - set(first)) < 2:  # both stores listen again
            await asyncio.sleep(0.1)
        waiter = asyncio.ensure_future(worker.wait_queued(MODEL, 120))
        await asyncio.sleep(0)
        await add(api, queued_job())
        await asyncio.wait_for(waiter, 60)
        return len(first)

    assert run(scenario()) == 2


def _listeners(url: str) -> list[int]:
    """Backends of this database that last ran a store's LISTEN (each store's listener connection)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE 'LISTEN kleinserve_stop_%'"
        ).fetchall()
    return [row[0] for row in rows]


def test_pooled_connections_the_server_ended_are_replaced(open_store, postgres_server, database_url):  # noqa: F811
    """A PostgreSQL restart or pg_terminate_backend ends the pool's idle connections; once the database is
    back, no call may fail on one of them (each pool thread would otherwise answer one 503)."""
    store = open_store()
    run(add_each(store, 8))  # connections on the pool's threads
    pooled = (f"datname = '{database_url.rsplit('/', 1)[1]}' AND application_name LIKE 'kleinserve pid %'"
              " AND query NOT LIKE 'LISTEN %'")  # fmt: skip
    terminate = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {pooled}"
    ended = postgres_server.query("postgres", terminate)
    assert ended and all(row[0] for row in ended)
    deadline = time.monotonic() + 30
    while postgres_server.query("postgres", f"SELECT pid FROM pg_stat_activity WHERE {pooled}"):
        assert time.monotonic() < deadline, "the terminated backends did not exit"
        time.sleep(0.05)
    added = run(add_each(store, 16))
    assert len(added) == 16 and store.outage is None


async def add_each(store, count: int) -> list:
    """`count` jobs added by concurrent calls, so that several pool threads take part."""
    return await asyncio.gather(*(add(store, queued_job()) for _ in range(count)))
