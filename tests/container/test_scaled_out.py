"""The scaled-out setup from containers (README "Containers", "Roles"): PostgreSQL and the S3 server on the
host, one `serve --role api` container and two `worker` containers of the image on the host network. A worker
container killed mid-job (`podman kill`, SIGKILL) loses no accepted job: its lease expires and the other
worker runs it."""

import re
import time

import httpx
import pytest

from support.containers import Container, new_volume, remove_volume
from support.fal_queue import result, status, submit, wait_until
from support.postgres_server import postgres_server  # noqa: F401 (fixture)
from support.s3_server import s3, s3_endpoint, s3_env  # noqa: F401 (fixtures)

MODEL = "flux.2-klein-4b"
JOBS = 6
LEASE = ["--job-lease-s", "6", "--worker-heartbeat-s", "0.5", "--worker-ttl-s", "5"]
STARTED_BY = re.compile(r"by worker (kleinserve-w\d)-")


@pytest.fixture
def cluster(image, postgres_server, s3, s3_env):  # noqa: F811
    database = postgres_server.create_database()
    bucket = f"kleinserve-containers-{database[-8:]}"
    s3.create_bucket(Bucket=bucket)
    shared = ["--database-url", postgres_server.url(database), "--store", f"s3://{bucket}/images", *LEASE]
    env = {**s3_env, "OMP_NUM_THREADS": "1"}  # two workers on this machine: a core each
    volumes = [new_volume() for _ in range(3)]
    workers = {
        f"kleinserve-w{i}": Container(image, "worker", "--demo", "--no-warmup", "--max-batch-images", "1",
                                      *shared, data=volumes[i], env=env, hostname=f"kleinserve-w{i}",
                                      healthcheck=False)
        for i in range(2)
    }  # fmt: skip
    api = Container(image, "serve", "--role", "api", *shared, data=volumes[2], env=env)
    try:
        for worker in workers.values():
            worker.start(ready_timeout=0)
        api.start()
        wait_until(lambda: live_workers(api) == 2, 300)
        yield api, workers
    finally:
        for container in [api, *workers.values()]:
            container.remove()
        for volume in volumes:
            remove_volume(volume)
        postgres_server.drop_database(database)


def live_workers(api: Container) -> int:
    return httpx.get(f"{api.url}/health", timeout=10).json()["models"].get(MODEL, {}).get("workers", 0)


def test_a_killed_worker_container_loses_no_accepted_job(cluster):
    api, workers = cluster
    bodies = [{"prompt": f"job {i}", "image_size": {"width": 512, "height": 512}, "num_inference_steps": 8,
               "seed": 100 + i} for i in range(JOBS)]  # fmt: skip
    ids = [submit(api.url, body) for body in bodies]
    victim_job, victim = wait_for_a_started_job(api, ids)
    workers[victim].signal("KILL")  # podman kill: no chance to hand anything back
    assert workers[victim].wait(timeout=60) == 137
    started = time.monotonic()
    wait_until(lambda: all(status(api.url, job_id)["status"] == "COMPLETED" for job_id in ids), 300)
    print(f"all {JOBS} jobs completed {time.monotonic() - started:.1f} s after the kill")
    jobs = [httpx.get(f"{api.url}/v1/jobs/{job_id}").json() for job_id in ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * JOBS, [job.get("error") for job in jobs]
    victim_record = jobs[ids.index(victim_job)]
    runs = started_by(victim_record)
    survivor = next(name for name in workers if name != victim)
    assert runs == [victim, survivor], runs  # started by the killed worker, finished by the other
    print(f"job {victim_job}: " + " | ".join(entry["message"] for entry in victim_record["logs"]))
    for job_id in ids:
        image = result(api.url, job_id)["images"][0]
        assert (image["width"], image["height"]) == (512, 512)
        assert httpx.get(image["url"], follow_redirects=True).content.startswith(b"\x89PNG")
    assert live_workers(api) == 1  # the killed one's heartbeat has gone quiet


def wait_for_a_started_job(api: Container, ids: list[str], timeout: float = 120.0) -> tuple[str, str]:
    """(job id, worker hostname) of the first job a worker has started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job_id in ids:
            runs = started_by(httpx.get(f"{api.url}/v1/jobs/{job_id}").json())
            if runs and status(api.url, job_id)["status"] == "IN_PROGRESS":
                return job_id, runs[-1]
        time.sleep(0.1)
    raise AssertionError(f"no job started within {timeout} s")


def started_by(job: dict) -> list[str]:
    return [match.group(1) for entry in job["logs"] if (match := STARTED_BY.search(entry["message"]))]
