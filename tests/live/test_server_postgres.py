"""`kleinserve serve --database-url postgresql://...`: the server keeps its jobs in a real PostgreSQL instead
of SQLite, answers both dialects from it, and a restart finds the records again."""

import httpx
import psycopg

from support.fal_queue import result, submit, wait_until
from support.live_server import LiveServer
from support.postgres_server import database_url, postgres_server  # noqa: F401 (fixtures)


def test_serve_keeps_its_jobs_in_postgres_across_a_restart(tmp_path, database_url):  # noqa: F811
    server = LiveServer(tmp_path / "data", "--demo", "--no-warmup", "--database-url", database_url)
    with server:
        answer = httpx.post(
            f"{server.url}/v1/images/generations",
            json={"model": "flux.2-klein-4b", "prompt": "a red fox", "size": "64x64", "n": 2},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["data"]) == 2
        openai_job = answer.headers["x-kleinserve-job-id"]
        fal_body = {"prompt": "a lighthouse", "image_size": {"width": 64, "height": 64}}
        fal_job = submit(server.url, fal_body)
        wait_until(lambda: httpx.get(f"{server.url}/v1/jobs/{fal_job}").json()["status"] == "succeeded")
        fal_output = result(server.url, fal_job)
    assert not (tmp_path / "data" / "jobs.sqlite3").exists()  # the jobs went to PostgreSQL
    with psycopg.connect(database_url) as conn:
        stored = dict(conn.execute("SELECT id, status FROM jobs").fetchall())
    assert stored == {openai_job: "succeeded", fal_job: "succeeded"}

    with server:  # a restart: the same records, and the fal result is still served
        jobs = {job_id: httpx.get(f"{server.url}/v1/jobs/{job_id}").json() for job_id in stored}
        assert {job_id: job["status"] for job_id, job in jobs.items()} == stored
        assert jobs[openai_job]["params"]["prompt"] == "a red fox"
        assert result(server.url, fal_job) == fal_output
