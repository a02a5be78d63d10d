"""Ray Serve: `kleinserve ray-deploy` on a real Ray head (127.0.0.1, token authentication) with a real
PostgreSQL queue; one API replica and an engine application for the tiny model, 1..2 replicas scaled on the
queue depth. It generates through both dialects (with server-sent events through Serve's proxy), scales up
while queue jobs wait, and loses no accepted job when its engine replicas are SIGKILLed mid-job. The scaling
policy is also checked on its own."""

import base64
import functools
import io
import json
import os
import signal
import subprocess
import sys
import time

import httpx
from PIL import Image

from kleinserve.cli import main
from kleinserve.models import Variant
from kleinserve.roles.ray_serve import API_APP, engine_app_name

from support.fal_queue import ENDPOINT, result, status, submit, wait_until
from support.live_server import free_port
from support.postgres_server import database_url, postgres_server  # noqa: F401 (fixtures)
from support.ray_cluster import ServeStatus, ray_head  # noqa: F401 (fixture)

MODEL = "flux.2-klein-4b"
ENGINE_APP = engine_app_name(MODEL)
WAITING = 6  # queue jobs kept waiting until Serve scales up: with 2 per replica they ask for 3, clamped to 2
QUICK_JOB = {"prompt": "a quick one", "image_size": {"width": 256, "height": 256}, "num_inference_steps": 4}
SLOW_JOB = {"prompt": "a slow one", "image_size": {"width": 1024, "height": 1024}, "num_inference_steps": 8}


def test_serve_generates_scales_on_the_queue_and_loses_no_job_to_sigkill(
    checkpoints, tmp_path, database_url, ray_head  # noqa: F811
):
    status = ServeStatus(ray_head)
    try:
        url = deploy(ray_head, database_url, checkpoints[Variant.DISTILLED], tmp_path)
        assert status_settles(status, lambda: status.running(ENGINE_APP, "Engine") == 1)
        assert status.running(API_APP, "Api") == 1
        generate_in_both_dialects(url)

        burst_at = time.monotonic()
        scaled = functools.partial(status.first_at, ENGINE_APP, "Engine", burst_at, two_running)
        burst = keep_jobs_waiting(url, until=scaled)
        scaled_at = status.first_at(ENGINE_APP, "Engine", burst_at, two_running)
        decided_at = status.first_at(ENGINE_APP, "Engine", burst_at, two_replicas)

        slow = [submit(url, {**SLOW_JOB, "seed": seed}) for seed in range(4)]
        wait_until(lambda: any(state(url, job_id) == "IN_PROGRESS" for job_id in slow), 300)
        interrupted = next(job_id for job_id in slow if state(url, job_id) == "IN_PROGRESS")
        victims = ray_head.replica_pids(ENGINE_APP)  # every engine replica: one of them runs that job
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()

        accepted = burst + slow
        wait_until(lambda: all(state(url, job_id) == "COMPLETED" for job_id in accepted), 600)
        done_at = time.monotonic()
        jobs = {job_id: httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json() for job_id in accepted}
        assert [job["status"] for job in jobs.values()] == ["succeeded"] * len(accepted)
        assert jobs[interrupted]["attempts"] >= 2  # killed mid-job, it ran again
        assert all(result(url, job_id)["images"] for job_id in accepted)
        back = ray_head.replica_pids(ENGINE_APP)
        assert back and not set(back) & set(victims)  # Serve started new replicas
        print(f"\n{len(burst)} quick jobs kept {WAITING} waiting: a 2nd engine replica started after "
              f"{decided_at - burst_at:.1f} s, running after {scaled_at - burst_at:.1f} s; SIGKILL of "
              f"{len(victims)} engine replicas -> all {len(accepted)} jobs done "
              f"{done_at - killed_at:.1f} s later")  # fmt: skip
    finally:
        status.stop()


def two_running(states: dict[str, int]) -> bool:
    return states.get("RUNNING", 0) == 2


def two_replicas(states: dict[str, int]) -> bool:  # starting or running: Serve raised the target
    return sum(states.values()) >= 2


def generate_in_both_dialects(url: str) -> None:
    body = {"model": MODEL, "prompt": "a red fox", "size": "128x64", "response_format": "b64_json"}
    openai = httpx.post(f"{url}/v1/images/generations", json=body, timeout=300)
    assert openai.status_code == 200, openai.text
    png = base64.b64decode(openai.json()["data"][0]["b64_json"])
    assert Image.open(io.BytesIO(png)).size == (128, 64)
    job_id = submit(url, {"prompt": "a blue bird", "image_size": {"width": 64, "height": 64}})
    wait_until(lambda: state(url, job_id) == "COMPLETED", 300)
    (image,) = result(url, job_id)["images"]
    assert Image.open(io.BytesIO(httpx.get(image["url"], timeout=30).content)).size == (64, 64)
    # Server-sent events pass Serve's proxy as they come: a step with its preview, then the output.
    fields = {"prompt": "a green frog", "image_size": {"width": 96, "height": 64}, "num_inference_steps": 4}
    with httpx.stream("POST", f"{url}/{ENDPOINT}/stream", json=fields, timeout=300) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in answer.iter_lines() if line.startswith("data: ")]
    *steps, output = events
    assert steps and all(event["status"] == "IN_PROGRESS" and event["images"] for event in steps)
    assert (output["images"][0]["width"], output["images"][0]["height"]) == (96, 64)


def keep_jobs_waiting(url: str, until, most: int = 300) -> list[str]:
    """Submit quick queue jobs so that WAITING of them wait, until `until()` (however fast they run)."""
    ids: list[str] = []
    while not until():
        assert len(ids) < most, f"no scale-up after {len(ids)} queue jobs"
        waiting = sum(state(url, job_id) == "IN_QUEUE" for job_id in ids[-2 * WAITING :])
        ids += [submit(url, {**QUICK_JOB, "seed": len(ids) + i}) for i in range(WAITING - waiting)]
        time.sleep(0.5)
    return ids


def deploy(head, database: str, checkpoint, tmp_path) -> str:
    port = free_port()
    command = [sys.executable, "-m", "kleinserve", "ray-deploy", "--ray-address", head.address,
               "--database-url", database, "--data-dir", str(tmp_path / "data"),
               "--model", f"{MODEL}={checkpoint}", "--no-warmup", "--host", "127.0.0.1", "--port", str(port),
               "--api-replicas", "1", "--min-engine-replicas", "1", "--max-engine-replicas", "2",
               "--jobs-per-engine-replica", "2", "--engine-gpus", "0",
               "--max-batch-images", "1", "--batch-wait-ms", "0", "--job-lease-s", "3",
               "--shutdown-grace-s", "2"]  # fmt: skip
    done = subprocess.run(command, env=head.env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{head.log()}"
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: ready(url), 120)
    return url


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def state(url: str, job_id: str) -> str:
    return status(url, job_id)["status"]


def status_settles(status: ServeStatus, condition, timeout: float = 300.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_ray_deploy_needs_a_shared_database_and_a_replica_per_model(capsys):
    assert main(["ray-deploy", "--demo"]) == 2
    assert "--database-url" in capsys.readouterr().err
    database = ["--database-url", "postgresql://kleinserve@127.0.0.1:5432/kleinserve"]
    assert main(["ray-deploy", "--demo", *database, "--min-engine-replicas", "0"]) == 2
    assert "--min-engine-replicas" in capsys.readouterr().err
    fewer_than_min = ["--min-engine-replicas", "3", "--max-engine-replicas", "2"]
    assert main(["ray-deploy", "--demo", *database, *fewer_than_min]) == 2
    assert "--min-engine-replicas" in capsys.readouterr().err
