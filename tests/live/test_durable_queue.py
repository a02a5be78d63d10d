"""The durable queue: accepted fal queue jobs (a /lora job with its LoRA too) and BFL tasks survive kill -9 of
the server and run again after a restart."""

import io
import signal

import httpx
import numpy as np
from PIL import Image

from kleinserve.models import Variant
from kleinserve.storage.store import PARTIAL_PREFIX

from support.fal_queue import ENDPOINT, result, status, submit, wait_until
from support.images import data_uri, random_image
from support.live_server import LiveServer
from support.lora_files import linear_shapes, write_peft_lora

REQUESTS = [  # (endpoint, body): one long job that will be running, an edit and two small ones behind it
    (ENDPOINT, {"prompt": "a long one", "image_size": {"width": 1024, "height": 1024},
                "num_inference_steps": 8, "seed": 11}),
    (f"{ENDPOINT}/edit", {"prompt": "an edit", "image_size": {"width": 128, "height": 128}, "seed": 12,
                          "image_urls": [data_uri(random_image(200, 150, 1)),
                                         data_uri(random_image(96, 96, 2))]}),
    (ENDPOINT, {"prompt": "small one", "image_size": {"width": 64, "height": 64}, "seed": 13,
                "num_images": 2}),
    (ENDPOINT, {"prompt": "small two", "image_size": {"width": 128, "height": 64}, "seed": 14}),
    (f"{ENDPOINT}/lora", {"prompt": "with a LoRA", "image_size": {"width": 64, "height": 64}, "seed": 15,
                          "loras": [{"path": "style.safetensors", "scale": 1.5}]}),
]  # fmt: skip


def test_queue_jobs_survive_kill_9_and_make_the_same_pixels(checkpoints, tmp_path, webhooks):
    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    write_peft_lora(lora_dir / "style.safetensors", linear_shapes(checkpoints[Variant.DISTILLED]), seed=1)
    flags = ["--model", f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}", "--no-warmup",
             "--max-batch-images", "1", "--batch-wait-ms", "0", "--lora-dir", str(lora_dir),
             "--allow-private-network", "127.0.0.1/32"]  # fmt: skip
    server = LiveServer(tmp_path, *flags).start()
    try:
        hook = f"{webhooks.url}/after-crash"  # the long job reports to a webhook, from its record
        ids = [
            submit(server.url, body, hook if i == 0 else None, endpoint)
            for i, (endpoint, body) in enumerate(REQUESTS)
        ]
        bfl_task = bfl_submit(server, f"{webhooks.url}/bfl-after-crash")  # BFL's API queues the same way
        wait_until(lambda: status(server.url, ids[0])["status"] == "IN_PROGRESS")
        before = [status(server.url, job_id)["status"] for job_id in ids]
        bfl_before = bfl_result(server, bfl_task)["status"]
    finally:
        server.stop(hard=True)  # SIGKILL: no chance to clean up
    assert before[0] == "IN_PROGRESS" and "IN_QUEUE" in before[1:] and bfl_before == "Pending"

    server.start()
    try:
        wait_until(lambda: all(status(server.url, job_id)["status"] == "COMPLETED" for job_id in ids), 300)
        jobs = [httpx.get(f"{server.url}/v1/jobs/{job_id}").json() for job_id in ids]
        assert [job["status"] for job in jobs] == ["succeeded"] * len(ids), [job.get("error") for job in jobs]
        assert jobs[-1]["params"]["loras"] == [{"path": "style.safetensors", "scale": 1.5}]
        messages = [entry["message"] for entry in jobs[0]["logs"]]
        assert any("attempt 1 of 3 was interrupted" in m for m in messages), messages
        assert any("(attempt 2)" in m for m in messages), messages
        outputs = [result(server.url, job_id) for job_id in ids]
        (delivery,) = webhooks.deliveries("after-crash", at_least=1)
        assert delivery["request_id"] == ids[0] and delivery["status"] == "OK"
        assert delivery["payload"] == outputs[0]
        recovered = [images_of(server, output) for output in outputs]
        uninterrupted = [images_of(server, run_sync(server, endpoint, body)) for endpoint, body in REQUESTS]
        wait_until(lambda: bfl_result(server, bfl_task)["status"] == "Ready", 300)
        (bfl_delivery,) = webhooks.deliveries("bfl-after-crash", at_least=1)
        assert bfl_delivery["id"] == bfl_task and bfl_delivery["status"] == "Ready"
        bfl_again = bfl_submit(server, None)
        wait_until(lambda: bfl_result(server, bfl_again)["status"] == "Ready", 300)
        recovered.append([bfl_sample(server, bfl_task)])
        uninterrupted.append([bfl_sample(server, bfl_again)])
    finally:
        server.stop()
    for after_crash, reference in zip(recovered, uninterrupted, strict=True):
        assert len(after_crash) == len(reference)
        for a, b in zip(after_crash, reference, strict=True):
            np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.rglob(f"{PARTIAL_PREFIX}*"))  # no half-written files remain


BFL_BODY = {"prompt": "a BFL task", "width": 64, "height": 64, "seed": 15, "output_format": "png"}


def bfl_submit(server, webhook: str | None) -> str:
    body = {**BFL_BODY, "webhook_url": webhook, "webhook_secret": "k"} if webhook else BFL_BODY
    answer = httpx.post(f"{server.url}/v1/flux-2-klein-4b", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def bfl_result(server, task: str) -> dict:
    return httpx.get(f"{server.url}/v1/get_result", params={"id": task}, timeout=60).json()


def bfl_sample(server, task: str) -> np.ndarray:
    data = httpx.get(bfl_result(server, task)["result"]["sample"], timeout=60).content
    return np.asarray(Image.open(io.BytesIO(data)))


def test_a_graceful_stop_keeps_queue_jobs_for_the_next_start(checkpoints, tmp_path):
    flags = ["--model", f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}", "--no-warmup",
             "--max-batch-images", "1", "--batch-wait-ms", "0", "--shutdown-grace-s", "0"]  # fmt: skip
    server = LiveServer(tmp_path, *flags).start()
    ids = [submit(server.url, body, endpoint=endpoint) for endpoint, body in REQUESTS[:3]]
    wait_until(lambda: status(server.url, ids[0])["status"] == "IN_PROGRESS")
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=60)
    server.start()
    try:
        wait_until(lambda: all(status(server.url, job_id)["status"] == "COMPLETED" for job_id in ids), 300)
        jobs = [httpx.get(f"{server.url}/v1/jobs/{job_id}").json() for job_id in ids]
        assert [job["status"] for job in jobs] == ["succeeded"] * 3
        released = [entry["message"] for entry in jobs[0]["logs"]]
        assert any("server stopped before this job finished; queued again" in m for m in released), released
    finally:
        server.stop()


def run_sync(server: LiveServer, endpoint: str, body: dict) -> dict:
    answer = httpx.post(f"{server.url}/{endpoint}", json=body, timeout=300)
    assert answer.status_code == 200, answer.text
    return answer.json()


def images_of(server: LiveServer, output: dict) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(httpx.get(image["url"]).content))) for image in output["images"]]
