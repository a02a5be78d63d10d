"""The SQLite job store: records survive reopening, interrupted jobs are failed, expiry deletes."""

import asyncio
import time

from kleinserve.jobs import Job, JobStatus, SQLiteJobStore, new_job_id


def run(coroutine):
    return asyncio.run(coroutine)


def test_round_trip_and_reopen(tmp_path):
    path = tmp_path / "jobs.sqlite3"

    async def write():
        store = SQLiteJobStore(path)
        job = Job(new_job_id(), "flux.2-klein-4b", {"prompt": "ünïcode 🦊", "seed": 3})
        job.logs.append({"timestamp": time.time(), "level": "INFO", "message": "queued at position 1"})
        await store.add(job)
        await store.mark_running(job.id)
        await store.log(job.id, "step 1/4")
        await store.finish(job.id, JobStatus.SUCCEEDED, result={"images": [{"key": "k"}], "seed": 3})
        await store.close()
        return job.id

    async def read(job_id):
        store = SQLiteJobStore(path)
        try:
            return await store.get(job_id), await store.get("missing")
        finally:
            await store.close()

    job_id = run(write())
    job, missing = run(read(job_id))
    assert missing is None
    assert job.status is JobStatus.SUCCEEDED and job.status.finished
    assert job.params["prompt"] == "ünïcode 🦊"
    assert job.result == {"images": [{"key": "k"}], "seed": 3}
    assert job.created_at <= job.started_at <= job.finished_at
    assert [entry["message"] for entry in job.logs] == ["queued at position 1", "step 1/4"]


def test_fail_unfinished_marks_queued_and_running_jobs(tmp_path):
    async def scenario():
        store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
        ids = {}
        for status in ("queued", "running", "done"):
            job = Job(new_job_id(), "m", {})
            ids[status] = job.id
            await store.add(job)
        await store.mark_running(ids["running"])
        await store.finish(ids["done"], JobStatus.SUCCEEDED, result={})
        failed = await store.fail_unfinished({"type": "server_error", "message": "restarted", "param": None})
        jobs = {name: await store.get(job_id) for name, job_id in ids.items()}
        await store.close()
        return ids, failed, jobs

    ids, failed, jobs = run(scenario())
    assert sorted(failed) == sorted([ids["queued"], ids["running"]])
    assert jobs["queued"].status is JobStatus.FAILED and jobs["queued"].error["message"] == "restarted"
    assert jobs["running"].logs[-1]["message"] == "restarted"
    assert jobs["done"].status is JobStatus.SUCCEEDED


def test_expired_returns_only_old_finished_jobs(tmp_path):
    async def scenario():
        store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
        old_done = Job(new_job_id(), "m", {}, created_at=100.0)
        old_running = Job(new_job_id(), "m", {}, status=JobStatus.RUNNING, created_at=100.0)
        new_done = Job(new_job_id(), "m", {}, status=JobStatus.SUCCEEDED)
        old_done.status = JobStatus.SUCCEEDED
        for job in (old_done, old_running, new_done):
            await store.add(job)
        expired = await store.expired(before=time.time() - 60)
        await store.delete([job.id for job in expired])
        remaining = [await store.get(job.id) for job in (old_done, old_running, new_done)]
        await store.close()
        return [job.id for job in expired], old_done.id, remaining

    expired, old_id, remaining = run(scenario())
    assert expired == [old_id]
    assert remaining[0] is None and remaining[1] is not None and remaining[2] is not None
