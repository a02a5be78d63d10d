"""Scaled out on loopback: `kleinserve serve --role api` and `kleinserve worker` processes sharing a real
PostgreSQL and a real S3 protocol server (moto). Any API server answers for any job; a killed worker or API
server loses no accepted queue job; the pixels are the ones one process makes."""

import base64
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from kleinserve.models import Variant

from support.fal_queue import ENDPOINT, result, status, submit, wait_until
from support.live_server import LiveServer, free_port
from support.postgres_server import database_url, postgres_server  # noqa: F401 (fixtures)
from support.replicate_webhooks import webhook_events
from support.s3_server import bucket, s3, s3_endpoint, s3_env  # noqa: F401 (fixtures)
from support.scale_cluster import Cluster, started_by

pytestmark = pytest.mark.live

MODEL = "flux.2-klein-4b"
SIZES = [(128, 128), (192, 192)]
LEASE_S = "6"  # a killed worker's jobs come back within ~1.5 leases
SHARED = ["--job-lease-s", LEASE_S, "--worker-heartbeat-s", "0.5", "--worker-ttl-s", "5"]
API = ["--allow-private-network", "127.0.0.1/32", "--webhook-attempts", "3", "--webhook-retry-base-s", "0.2"]


def worker_flags(checkpoints) -> list[str]:
    return ["--model", f"{MODEL}={checkpoints[Variant.DISTILLED]}", "--no-warmup", "--max-batch-images", "4",
            "--batch-wait-ms", "100"]  # fmt: skip


def cluster_of(root, url: str, bucket_name: str, aws: dict, checkpoints, workers: int, worker_env=None):
    """`workers` workers and an API server on PostgreSQL at `url`, images in the bucket (`aws`: AWS_* env)."""
    return Cluster(root, url, workers=workers, worker_flags=worker_flags(checkpoints), api_flags=API,
                   shared=[*SHARED, "--store", f"s3://{bucket_name}/images"], env=aws,
                   worker_env=worker_env)  # fmt: skip


def body(i: int, steps: int = 4) -> dict:
    width, height = SIZES[i % len(SIZES)]
    size = {"width": width, "height": height}
    return {"prompt": f"job {i}", "image_size": size, "num_inference_steps": steps, "seed": 1000 + i}


# --- one cluster for the smaller tests ------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(postgres_server, s3, s3_env, checkpoints, tmp_path_factory):  # noqa: F811
    name = postgres_server.create_database()
    bucket_name = f"kleinserve-scale-{name[-8:]}"
    s3.create_bucket(Bucket=bucket_name)
    root = tmp_path_factory.mktemp("cluster")
    ports = [free_port(), free_port()]
    metrics = [{"KLEINSERVE_WORKER_METRICS_PORT": str(port)} for port in ports]
    url = postgres_server.url(name)
    with cluster_of(root, url, bucket_name, s3_env, checkpoints, workers=2, worker_env=metrics) as running:
        running.metrics_ports = ports
        yield running
    postgres_server.drop_database(name)


def test_the_api_role_lists_the_models_its_workers_report(cluster):
    health = httpx.get(f"{cluster.api.url}/health").json()
    assert health["models"] == {MODEL: {"state": "ready", "workers": 2}}
    listed = httpx.get(f"{cluster.api.url}/v1/models").json()["data"]
    assert [(model["id"], model["state"]) for model in listed] == [(MODEL, "ready")]
    missing = httpx.post(f"{cluster.api.url}/fal-ai/flux-2/klein/9b", json={"prompt": "x"})
    assert missing.status_code == 404 and "flux.2-klein-9b" in missing.text and ENDPOINT in missing.text


def test_waits_streams_status_result_and_cancel_are_answered_for_jobs_workers_run(cluster):
    url = cluster.api.url
    ran = httpx.post(f"{url}/{ENDPOINT}", json=body(0), timeout=300)
    assert ran.status_code == 200, ran.text
    assert fetch(ran.json()["images"][0]["url"]).shape == (128, 128, 3)

    events = stream(url, body(1, steps=4))
    steps = [event for event in events if event.get("status") == "IN_PROGRESS"]
    assert steps and all(event["images"] for event in steps)  # previews recorded by the worker
    assert [event["step"] for event in steps] == sorted({event["step"] for event in steps})
    assert events[-1]["images"][0]["width"] == 192 and events[-1]["seed"] == 1001

    inline = httpx.post(f"{url}/v1/images/generations", timeout=300, json={
        "model": MODEL, "prompt": "inline", "size": "64x64", "response_format": "b64_json"})  # fmt: skip
    assert inline.status_code == 200, inline.text
    picture = Image.open(io.BytesIO(base64.b64decode(inline.json()["data"][0]["b64_json"])))
    assert picture.size == (64, 64)

    job_id = submit(cluster.api.url, body(2))
    wait_until(lambda: status(cluster.api.url, job_id)["status"] == "COMPLETED")
    output = result(cluster.api.url, job_id)
    assert output["seed"] == 1002 and fetch(output["images"][0]["url"]).shape == (128, 128, 3)
    assert started_by(job_record(cluster.api, job_id))[0] in {worker.pid for worker in cluster.workers}

    doomed = submit(cluster.api.url, body(3, steps=8))
    cancel = httpx.put(f"{url}/queue/{ENDPOINT}/requests/{doomed}/cancel")
    assert cancel.json()["status"] in ("CANCELLATION_REQUESTED", "ALREADY_COMPLETED")
    wait_until(lambda: status(cluster.api.url, doomed)["status"] == "COMPLETED")
    if cancel.json()["status"] == "CANCELLATION_REQUESTED":
        answer = httpx.get(f"{url}/queue/{ENDPOINT}/requests/{doomed}")
        assert answer.status_code == 400 and "was cancelled" in answer.text


def test_workers_publish_their_engine_metrics(cluster):
    job_ids = [submit(cluster.api.url, body(i)) for i in range(4)]
    api = cluster.api.url
    wait_until(lambda: all(status(api, job_id)["status"] == "COMPLETED" for job_id in job_ids), 300)
    images = 0.0
    for port in cluster.metrics_ports:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        images += sum(float(line.split()[-1]) for line in text.splitlines()
                      if line.startswith("kleinserve_images_generated_total{"))  # fmt: skip
    assert images >= 4  # earlier tests made more; each worker counts what it ran


def test_a_replicate_predictions_webhook_events_come_in_order_from_the_api_role(cluster, webhooks):
    """The job runs in a worker; the API server that created the prediction follows it through the database
    and sends start, logs, output and completed, in that order, the end once."""
    created = httpx.post(f"{cluster.api.url}/v1/models/black-forest-labs/flux-2-klein-4b/predictions", json={
        "input": {"prompt": "split roles", "size": "128x128", "seed": 5},
        "webhook": f"{webhooks.url}/replicate-split"}, timeout=60)  # fmt: skip
    assert created.status_code == 201, created.text
    prediction_id = created.json()["id"]
    events = webhook_events(webhooks, "replicate-split", prediction_id, timeout=300)
    kinds = [event for event, _ in events]
    assert kinds[0] == "start" and kinds[-2:] == ["output", "completed"] and set(kinds[1:-2]) == {"logs"}
    assert events[-1][1]["status"] == "succeeded" and fetch(events[-1][1]["output"][0]).shape == (128, 128, 3)


def test_two_api_servers_send_each_webhook_exactly_once(cluster, webhooks):
    second = cluster.add_api()
    servers = [cluster.apis[0], second]
    ids = [submit(servers[i % 2].url, body(i), f"{webhooks.url}/two-apis") for i in range(6)]
    deliveries = webhooks.deliveries("two-apis", at_least=6, timeout=300)
    time.sleep(2.0)  # both servers poll their queue several times meanwhile: nothing more arrives
    assert sorted(d["request_id"] for d in webhooks.received["two-apis"]) == sorted(ids)
    for delivery in deliveries:
        assert delivery["status"] == "OK"
        assert unsigned(delivery["payload"]) == unsigned(result(servers[0].url, delivery["request_id"]))


# --- faults ---------------------------------------------------------------------------------------


def test_a_killed_worker_loses_no_job_and_the_pixels_are_one_process_s(
    checkpoints, database_url, bucket, s3_env, webhooks, tmp_path  # noqa: F811
):
    cluster = cluster_of(tmp_path / "scaled", database_url, bucket, s3_env, checkpoints, workers=2)
    with cluster:
        api = cluster.api
        ids = [submit(api.url, body(i), f"{webhooks.url}/worker-killed") for i in range(24)]
        killed = kill_a_worker_running_a_job(cluster)
        wait_until(lambda: all(status(api.url, job_id)["status"] == "COMPLETED" for job_id in ids), 600)
        records = [job_record(api, job_id) for job_id in ids]
        assert [r["status"] for r in records] == ["succeeded"] * 24, [r["error"] for r in records]
        (survivor,) = [worker.pid for worker in cluster.workers if worker.pid != killed]
        retried = [r for r in records if r["attempts"] >= 2]
        assert retried, "no job was running on the killed worker"
        assert all(started_by(r)[:1] == [killed] and started_by(r)[-1] == survivor for r in retried)
        outputs = [result(api.url, job_id) for job_id in ids]  # the API server ran none of them
        scaled = [[fetch(image["url"]) for image in output["images"]] for output in outputs]

        deliveries = webhooks.deliveries("worker-killed", at_least=24, timeout=300)
        assert sorted(d["request_id"] for d in deliveries) == sorted(ids)
        by_id = {job_id: unsigned(output) for job_id, output in zip(ids, outputs, strict=True)}
        assert all(unsigned(d["payload"]) == by_id[d["request_id"]] for d in deliveries)

        cancelled_steps = cancel_a_running_job(api)
    assert cancelled_steps and max(cancelled_steps) < 8, cancelled_steps

    with LiveServer(tmp_path / "single", *worker_flags(checkpoints)) as single:  # --role all, SQLite, files
        alone = [submit(single.url, body(i)) for i in range(24)]
        wait_until(lambda: all(status(single.url, job_id)["status"] == "COMPLETED" for job_id in alone), 600)
        singles = [result(single.url, job_id) for job_id in alone]
        reference = [[fetch(image["url"]) for image in output["images"]] for output in singles]
    for mine, theirs in zip(scaled, reference, strict=True):
        assert len(mine) == len(theirs) == 1
        np.testing.assert_array_equal(mine[0], theirs[0])


def test_a_killed_api_server_loses_no_accepted_queue_job(
    checkpoints, database_url, bucket, s3_env, webhooks, tmp_path  # noqa: F811
):
    cluster = cluster_of(tmp_path, database_url, bucket, s3_env, checkpoints, workers=1)
    with cluster:
        first = cluster.api
        accepted, stop = [], threading.Event()

        def keep_submitting():
            i = 0
            while not stop.is_set():
                try:
                    answer = httpx.post(f"{first.url}/queue/{ENDPOINT}", json=body(i),
                                        params={"fal_webhook": f"{webhooks.url}/api-killed"}, timeout=30)
                    if answer.status_code == 200:
                        accepted.append(answer.json()["request_id"])
                except httpx.TransportError:
                    time.sleep(0.05)  # the server is gone: nothing was accepted
                i += 1

        client = threading.Thread(target=keep_submitting)
        client.start()
        try:
            wait_until(lambda: len(accepted) >= 8)
            first.stop(hard=True)  # SIGKILL, mid-load
        finally:
            stop.set()
            client.join()
        second = cluster.add_api()
        wait_until(lambda: all(status(second.url, job)["status"] == "COMPLETED" for job in accepted), 600)
        records = [job_record(second, job_id) for job_id in accepted]
        assert [r["status"] for r in records] == ["succeeded"] * len(accepted), [r["error"] for r in records]
        outputs = [result(second.url, job_id) for job_id in accepted]
        assert all(fetch(output["images"][0]["url"]).ndim == 3 for output in outputs)
        delivered = webhooks.deliveries("api-killed", at_least=len(accepted), timeout=300)
        assert set(accepted) <= {d["request_id"] for d in delivered}  # each at least once (receivers dedupe)


# --- helpers --------------------------------------------------------------------------------------


def kill_a_worker_running_a_job(cluster: Cluster) -> int:
    """SIGKILL the worker that runs a job now; its pid."""
    api = cluster.api

    def running() -> list[str]:
        listed = httpx.get(f"{api.url}/v1/jobs", params={"status": "running"}).json()["data"]
        return [job["id"] for job in listed]

    wait_until(lambda: bool(running()))
    for job_id in running():
        if pids := started_by(job_record(api, job_id)):
            cluster.worker_of(pids[-1]).stop(hard=True)
            return pids[-1]
    raise AssertionError("no running job has said which worker runs it")


def cancel_a_running_job(api: LiveServer) -> list[int]:
    """Cancel a long job once it has taken a step; the steps it logged, once its worker let it go."""
    # Four 1024² images: ~0.6 s a step on a CPU, so the cancel lands mid-run even on a loaded machine
    # (one 512² image took its 8 steps in 0.25 s, and a cancel sometimes came after the last).
    long = submit(api.url, {"prompt": "long", "image_size": {"width": 1024, "height": 1024},
                        "num_images": 4, "num_inference_steps": 8, "seed": 7})  # fmt: skip
    wait_until(lambda: any(m.startswith("step ") for m in messages(api, long)), 300)
    cancel = httpx.put(f"{api.url}/queue/{ENDPOINT}/requests/{long}/cancel")
    assert cancel.json() == {"status": "CANCELLATION_REQUESTED"}
    after = submit(api.url, body(99))  # one worker: it runs this once it has stopped the cancelled batch
    wait_until(lambda: status(api.url, after)["status"] == "COMPLETED", 300)
    record = job_record(api, long)
    assert record["status"] == "cancelled"
    return [int(m.split()[1].split("/")[0]) for m in messages(api, long) if m.startswith("step ")]


def job_record(server: LiveServer, job_id: str) -> dict:
    return httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=30).json()


def messages(server: LiveServer, job_id: str) -> list[str]:
    return [entry["message"] for entry in job_record(server, job_id)["logs"]]


def stream(url: str, fields: dict) -> list[dict]:
    with httpx.stream("POST", f"{url}/{ENDPOINT}/stream", json=fields, timeout=300) as answer:
        assert answer.status_code == 200
        return [json.loads(line[6:]) for line in answer.iter_lines() if line.startswith("data: ")]


def unsigned(output: dict) -> dict:
    """fal output JSON with its image URLs' presigned query strings (a new signature each time) cut off."""
    images = [{**image, "url": image["url"].split("?")[0]} for image in output["images"]]
    return {**output, "images": images}


def fetch(url: str) -> np.ndarray:
    answer = httpx.get(url, timeout=30)
    assert answer.status_code == 200, url
    return np.asarray(Image.open(io.BytesIO(answer.content)))
