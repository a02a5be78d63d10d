"""The scaled-out roles under faults, on loopback: one API server and two workers sharing a PostgreSQL of this
module's own (so it can stop it) and the session's moto S3 server, reached through a TCP gate (closing it is
the S3 outage; moto itself would lose its buckets on a restart): PostgreSQL stopped and restarted, a worker
frozen past its lease and one whose connections are killed server-side, S3 unreachable. Each test asserts
outcomes: every accepted job ends succeeded, exactly once (one recorded end), with the pixels of an
uninterrupted run; nothing a worker writes after losing its lease changes a job."""

import base64
import io
import os
import signal
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from kleinserve.models import Variant

from support.fal_queue import ENDPOINT, result, status, submit, wait_until
from support.live_server import LiveServer
from support.postgres_server import PostgresServer, find_binaries
from support.s3_server import CREDENTIALS, PortGate, s3, s3_endpoint, s3_env  # noqa: F401 (fixtures)
from support.scale_cluster import Cluster, started_by

pytestmark = pytest.mark.live

MODEL = "flux.2-klein-4b"
LEASE_S = 5.0
BUCKET = "kleinserve-faults"
BODIES = [{"prompt": f"fault {i}", "image_size": {"width": 192, "height": 192}, "num_inference_steps": 8,
           "seed": 70 + i} for i in range(3)]  # fmt: skip


class Faulty:
    """The cluster and the parts this module breaks."""

    def __init__(self, postgres: PostgresServer, database: str, s3_gate: PortGate, cluster: Cluster):
        self.postgres, self.database, self.s3_gate, self.cluster = postgres, database, s3_gate, cluster
        self.references: dict[int, np.ndarray] = {}  # body index -> its pixels, from an uninterrupted run

    @property
    def url(self) -> str:
        return self.cluster.api.url

    def sql(self, sql: str) -> list[tuple]:
        return self.postgres.query(self.database, sql)


@pytest.fixture(scope="module")
def faulty(checkpoints, s3, s3_endpoint, tmp_path_factory):  # noqa: F811
    binaries = find_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are missing")
    postgres = PostgresServer(binaries).start()
    s3.create_bucket(Bucket=BUCKET)
    gate = PortGate(int(s3_endpoint.rsplit(":", 1)[1])).open()  # S3 as the cluster reaches it
    try:
        database = postgres.create_database()
        env = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{gate.port}"}
        shared = ["--job-lease-s", str(LEASE_S), "--worker-heartbeat-s", "0.5", "--worker-ttl-s", "30",
                  "--store", f"s3://{BUCKET}/images"]  # fmt: skip
        workers = ["--model", f"{MODEL}={checkpoints[Variant.DISTILLED]}", "--no-warmup",
                   "--max-batch-images", "1", "--batch-wait-ms", "0"]  # fmt: skip
        cluster = Cluster(tmp_path_factory.mktemp("faults"), postgres.url(database), workers=2,
                          worker_flags=workers, shared=shared, env=env)  # fmt: skip
        state = Faulty(postgres, database, gate, cluster)
        with cluster:
            ids = [submit(state.url, body) for body in BODIES]
            wait_until(lambda: all(status(state.url, job_id)["status"] == "COMPLETED" for job_id in ids), 300)
            state.references = {i: pixels_of(state.url, job_id) for i, job_id in enumerate(ids)}
            yield state
    finally:
        gate.close()
        postgres.stop()


# --- helpers ----------------------------------------------------------------------------------------------


def record(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()


def jobs_listed(url: str) -> list[dict]:
    return httpx.get(f"{url}/v1/jobs", params={"limit": 1000}, timeout=30).json()["data"]


def pixels_of(url: str, job_id: str) -> np.ndarray:
    (image,) = result(url, job_id)["images"]
    if image["url"].startswith("data:"):
        data = base64.b64decode(image["url"].split(",", 1)[1])
    else:
        answer = httpx.get(image["url"], timeout=30)
        assert answer.status_code == 200, image["url"]
        data = answer.content
    return np.asarray(Image.open(io.BytesIO(data)))


def ends(job: dict) -> list[str]:
    """The job's recorded ends (its log's final lines): exactly one for a job that ended once."""
    return [entry["message"] for entry in job["logs"] if entry["message"] in ("succeeded", "failed")
            or entry["message"].startswith(("succeeded:", "failed:"))]  # fmt: skip


def all_done(url: str, ids: list[str], timeout: float = 300) -> None:
    wait_until(lambda: all(status(url, job_id)["status"] == "COMPLETED" for job_id in ids), timeout)


def assert_each_succeeded_once_with_the_reference_pixels(faulty: Faulty, submitted: dict[str, int]) -> None:
    for job_id, body in submitted.items():
        job = record(faulty.url, job_id)  # its end line is written with its end
        assert job["status"] == "succeeded", (job["error"], faulty.cluster.logs())
        assert ends(job) == ["succeeded"], job["logs"]
        np.testing.assert_array_equal(pixels_of(faulty.url, job_id), faulty.references[body])


def running_on_a_worker(faulty: Faulty, ids) -> tuple[str, int]:
    """One of the jobs `ids` that a worker runs now, and that worker's pid."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for job_id in ids:
            job = record(faulty.url, job_id)
            if job["status"] == "running" and started_by(job):
                return job_id, started_by(job)[-1]
        time.sleep(0.02)
    raise AssertionError(f"none of {ids} ran: {[record(faulty.url, job_id) for job_id in ids]}")


def frozen_mid_job(faulty: Faulty, body: dict, tries: int = 5):
    """A job of `body` and the worker SIGSTOPped while running it. A small job can end between being seen
    running and the signal (more likely on a loaded machine): that try does not count, the next one does."""
    for _ in range(tries):
        job_id = submit(faulty.url, body)
        worker = faulty.cluster.worker_of(running_on_a_worker(faulty, [job_id])[1])
        os.kill(worker.pid, signal.SIGSTOP)
        time.sleep(0.2)  # a commit already on its way lands before the record is read
        if record(faulty.url, job_id)["status"] == "running":
            return job_id, worker
        os.kill(worker.pid, signal.SIGCONT)
        all_done(faulty.url, [job_id])
    raise AssertionError(f"each of {tries} jobs ended before its worker could be frozen")


# --- PostgreSQL --------------------------------------------------------------------------------------------


def test_while_postgresql_is_down_requests_get_503s_and_every_accepted_job_ends_once(faulty):
    url = faulty.url
    submitted = {submit(url, BODIES[i % 3]): i % 3 for i in range(6)}
    running_on_a_worker(faulty, submitted)
    waiting = {}
    sync = threading.Thread(target=lambda: waiting.update(answer=httpx.post(
        f"{url}/{ENDPOINT}", json={**BODIES[0], "sync_mode": True}, timeout=300)))  # fmt: skip
    recorded = len(jobs_listed(url))
    sync.start()
    wait_until(lambda: len(jobs_listed(url)) > recorded)  # its job is recorded before the database goes

    faulty.postgres.pause()
    try:
        fal = httpx.post(f"{url}/queue/{ENDPOINT}", json=BODIES[0], timeout=30)
        assert fal.status_code == 503, fal.text
        assert fal.headers["retry-after"] == "5" and fal.headers["x-fal-error-type"] == "database_unavailable"
        assert "database is unreachable" in fal.json()["detail"]
        openai = httpx.post(f"{url}/v1/images/generations", json={"prompt": "x", "size": "64x64"}, timeout=30)
        assert openai.status_code == 503 and openai.headers["retry-after"] == "5", openai.text
        assert openai.json()["error"]["code"] == "database_unavailable"
        bfl = httpx.post(f"{url}/v1/flux-2-klein-4b", json={"prompt": "x", "width": 64, "height": 64})
        assert bfl.status_code == 503 and "database is unreachable" in bfl.json()["detail"], bfl.text
        wait_until(lambda: httpx.get(f"{url}/ready").status_code == 503, 30)
        health = httpx.get(f"{url}/health").json()
        assert health["status"] == "degraded" and health["database"]["reachable"] is False
        time.sleep(1.0)
    finally:
        faulty.postgres.resume()

    all_done(url, list(submitted))
    sync.join(300)
    assert waiting["answer"].status_code == 200, waiting["answer"].text
    assert_each_succeeded_once_with_the_reference_pixels(faulty, submitted)
    assert all(record(url, job_id)["attempts"] <= 2 for job_id in submitted)  # a lease may run out meanwhile
    wait_until(lambda: httpx.get(f"{url}/ready").status_code == 200, 30)
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_a_postgresql_restart_mid_load_leaves_listeners_and_pools_working(faulty):
    url = faulty.url
    before = {submit(url, BODIES[i % 3]): i % 3 for i in range(4)}
    running_on_a_worker(faulty, before)
    faulty.postgres.restart()
    pids = {faulty.cluster.api.process.pid, *(worker.pid for worker in faulty.cluster.workers)}

    def listening() -> set[int]:
        rows = faulty.sql("SELECT application_name FROM pg_stat_activity WHERE query LIKE 'LISTEN %'")
        return {int(name.rsplit(" ", 1)[1]) for (name,) in rows if name.startswith("kleinserve pid ")}

    wait_until(lambda: listening() == pids, 30)  # every process' LISTEN connection is back
    after = {submit(url, BODIES[i % 3]): i % 3 for i in range(2)}
    all_done(url, [*before, *after])
    assert_each_succeeded_once_with_the_reference_pixels(faulty, {**before, **after})


# --- a worker cut off -------------------------------------------------------------------------------------


def test_a_frozen_worker_past_its_lease_changes_nothing_when_it_wakes(faulty):
    url = faulty.url
    job_id, frozen = frozen_mid_job(faulty, BODIES[1])
    try:
        all_done(url, [job_id])  # requeued once its lease ran out, run by the other worker
        finished = record(url, job_id)
        answered = result(url, job_id)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    wait_until(lambda: f"job {job_id} is no longer leased here" in frozen.log(), 60)
    assert started_by(finished)[0] == frozen.pid and started_by(finished)[-1] != frozen.pid
    after = record(url, job_id)
    assert (after["status"], after["result"], after["finished_at"]) == (
        "succeeded", finished["result"], finished["finished_at"])  # fmt: skip
    assert ends(after) == ["succeeded"] and result(url, job_id)["images"][0]["url"].split("?")[0] == (
        answered["images"][0]["url"].split("?")[0])  # fmt: skip
    np.testing.assert_array_equal(pixels_of(url, job_id), faulty.references[1])


def test_a_worker_whose_connections_are_killed_mid_batch_records_its_end_once(faulty):
    url = faulty.url
    job_id = submit(url, BODIES[2])
    _, pid = running_on_a_worker(faulty, [job_id])
    killed = faulty.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        f" WHERE application_name = 'kleinserve pid {pid}'")  # fmt: skip
    assert killed and all(done for (done,) in killed)
    all_done(url, [job_id])
    assert_each_succeeded_once_with_the_reference_pixels(faulty, {job_id: 2})


# --- S3 ---------------------------------------------------------------------------------------------------


def test_while_s3_is_down_ending_jobs_retry_their_upload_and_inline_results_go_on(faulty, tmp_path):
    url = faulty.url
    submitted = {submit(url, BODIES[i % 3]): i % 3 for i in range(3)}
    running_on_a_worker(faulty, submitted)
    faulty.s3_gate.close()  # S3 unreachable: connections refused
    try:
        inline = httpx.post(f"{url}/{ENDPOINT}", json={**BODIES[2], "sync_mode": True}, timeout=300)
        assert inline.status_code == 200, inline.text
        assert inline.json()["images"][0]["url"].startswith("data:image/")
        cluster = faulty.cluster
        starting = LiveServer(tmp_path / "api", "--role", "api", *cluster.shared, env=cluster.env)
        refused = f"(?s)exited with [1-9].*cannot use bucket '{BUCKET}'"
        with pytest.raises(RuntimeError, match=refused) as failed:
            starting.start(timeout=120)
        assert "Traceback" not in str(failed.value)
        wait_until(lambda: "cannot store" in "".join(w.log() for w in faulty.cluster.workers), 60)
    finally:
        faulty.s3_gate.open()
    all_done(url, list(submitted))
    assert_each_succeeded_once_with_the_reference_pixels(faulty, submitted)
