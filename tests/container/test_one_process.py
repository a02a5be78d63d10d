"""The image as one process (`serve`), its port 8000 published on the host: run with no arguments it
serves the demo model and answers the README's quickstart curl examples from the host; SIGTERM mid-job
drains as README "Hostile input and faults" (Shutdown) says; a restart on the same /data volume keeps the
finished jobs and their files, and runs the kept queue job."""

import importlib.util
import threading
import time

import httpx

from support.containers import ROOT, Container, podman
from support.fal_queue import ENDPOINT

SYNC_TIMEOUT_S = 300


def quickstart_smoke():
    """.ci/quickstart_smoke.py, CI's own reading of the README's quickstart curl examples and their checks."""
    spec = importlib.util.spec_from_file_location("quickstart_smoke", ROOT / ".ci" / "quickstart_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_default_command_serves_the_demo_and_answers_the_quickstart_curls(image, volume):
    server = Container(image, data=volume, publish=True).start()  # CMD: serve --demo (with its warm-up)
    try:
        smoke = quickstart_smoke()
        curls = smoke.curl_examples(smoke.quickstart_section())
        assert len(curls) >= 2, curls
        for curl in curls:
            print(f"{curl} -> {smoke.check_curl(curl, server.port)}")
        assert podman("exec", server.name, "id", "-u").stdout.strip() == "10001"  # not root
        assert podman("healthcheck", "run", server.name, check=False).returncode == 0  # HEALTHCHECK on /ready
        command = podman("exec", server.name, "cat", "/proc/1/cmdline").stdout.split("\0")
        assert command[1:3] == ["/opt/kleinserve/bin/kleinserve", "serve"], command  # PID 1: gets SIGTERM
    finally:
        server.remove()


def test_sigterm_mid_job_drains_and_a_restart_on_the_same_volume_keeps_finished_jobs(image, volume):
    flags = ["serve", "--demo", "--no-warmup", "--batch-wait-ms", "0", "--shutdown-grace-s", "1"]
    server = Container(image, *flags, data=volume, env={"OMP_NUM_THREADS": "1"}, publish=True).start()
    try:
        finished = generate(server, {"prompt": "a fox", "size": "64x64", "seed": 9}).json()
        file_path = finished["data"][0]["url"].split(str(server.port), 1)[1]
        file_bytes = httpx.get(server.url + file_path).content
        answers = {}
        big = {"prompt": "long", "size": "2048x2048", "num_inference_steps": 8}
        running = threading.Thread(target=lambda: answers.setdefault("running", generate(server, big)))
        running.start()
        running_id = wait_for_running_job(server)
        queued = httpx.post(f"{server.url}/queue/{ENDPOINT}", json={"prompt": "kept", "image_size": "square"})
        sent = time.monotonic()
        server.signal("TERM")
        running.join(timeout=120)
        exit_code = server.wait(timeout=120)
        print(f"SIGTERM -> exit {exit_code} after {time.monotonic() - sent:.1f} s")
        assert exit_code in (0, 143), server.logs()  # 143: 128 + SIGTERM, re-raised by uvicorn
        answer = answers["running"]
        assert answer.status_code == 503, answer.text
        assert "shutting down" in answer.json()["error"]["message"]
        assert "Traceback" not in server.logs()
        server.remove()
        server.start()  # a new container, the same /data volume and port
        job = httpx.get(f"{server.url}/v1/jobs/{finished['job_id']}").json()
        assert job["status"] == "succeeded" and job["result"]["seed"] == 9, job
        assert httpx.get(server.url + file_path).content == file_bytes
        interrupted = httpx.get(f"{server.url}/v1/jobs/{running_id}").json()
        assert interrupted["status"] == "failed", interrupted  # its caller got the 503; the record says so
        assert "server stopped before this job finished" in interrupted["error"]["message"]
        kept = wait_for_end(server, queued.json()["request_id"])
        assert kept["status"] == "succeeded", kept  # the queue job nobody waited on ran after the restart
    finally:
        server.remove()


def generate(server: Container, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/images/generations", json=body, timeout=SYNC_TIMEOUT_S)


def wait_for_running_job(server: Container, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = httpx.get(f"{server.url}/v1/jobs", params={"status": "running"}).json()["data"]
        if running:
            return running[0]["id"]
        time.sleep(0.05)
    raise AssertionError(f"no running job after {timeout} s:\n{server.logs()}")


def wait_for_end(server: Container, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while (job := httpx.get(f"{server.url}/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job
