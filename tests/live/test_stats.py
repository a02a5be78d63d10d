"""/v1/stats: the figures gateways publish, read from the job store's request samples (so they survive a
restart and would be the same on every API server), per served model over the configured window, the last
hour and the last day."""

import json
import time

import httpx
import pytest

from kleinserve.models import Variant
from kleinserve.service.stats import SERIES_POINTS, WINDOWS

from support.fal_queue import wait_until
from support.live_server import LiveServer

MODEL, OTHER = "flux.2-klein-4b", "flux.2-klein-base-4b"
ENDPOINT = "fal-ai/flux-2/klein/4b"


def test_stats_count_every_kind_of_request_and_a_restart_keeps_them(checkpoints, tmp_path):
    flags = ["--model", f"{MODEL}={checkpoints[Variant.DISTILLED]}",
             "--model", f"{OTHER}={checkpoints[Variant.BASE]}", "--no-warmup"]  # fmt: skip
    server = LiveServer(tmp_path, *flags).start()
    try:
        began = time.monotonic()
        statuses, images = make_requests(server)
        elapsed_ms = (time.monotonic() - began) * 1000
        wait_until(lambda: stats(server)["models"][MODEL]["requests"] == len(statuses))  # the queue job's
        before = stats(server)
    finally:
        server.stop()
    assert statuses == [200, 400, 200, 200, 200]  # OpenAI n=2, OpenAI without prompt, fal sync, stream, queue
    mine = before["models"][MODEL]
    assert (mine["requests"], mine["succeeded"], mine["rejected"], mine["failed"]) == (5, 4, 1, 0)
    assert mine["success_rate"] == 1.0 and before["window_seconds"] == 3600
    for figure in ("generation_ms", "time_to_first_byte_ms"):
        assert 0 < mine[figure]["p50"] <= mine[figure]["p95"] <= elapsed_ms
    for name, window in before["windows"].items():
        summary = window["models"][MODEL]
        assert window["seconds"] == WINDOWS[name]
        assert {k: summary[k] for k in mine} == mine  # every sample is inside both windows
        assert summary["images"] == images == 6
        assert summary["images_per_second"] == pytest.approx(images / WINDOWS[name], abs=1e-6)
        assert summary["queue_depth"] == 0
        assert len(summary["series"]) == SERIES_POINTS and sum(p["requests"] for p in summary["series"]) == 5
        unused = window["models"][OTHER]  # served, never asked: listed with nothing
        assert (unused["requests"], unused["success_rate"], unused["generation_ms"]["p50"]) == (0, None, None)

    server.start()  # the samples are in the store, not the process
    try:
        after = stats(server)
    finally:
        server.stop()
    assert after["models"] == before["models"]
    for name in WINDOWS:
        for model in (MODEL, OTHER):
            kept, now = before["windows"][name]["models"][model], after["windows"][name]["models"][model]
            assert {k: v for k, v in now.items() if k != "series"} == {
                k: v for k, v in kept.items() if k != "series"
            }


def make_requests(server: LiveServer) -> tuple[list[int], int]:
    """One request of each kind on the 4B model; their HTTP statuses and the images they delivered."""
    answers = [
        httpx.post(f"{server.url}/v1/images/generations", timeout=120,
                   json={"model": MODEL, "prompt": "two foxes", "size": "64x64", "n": 2}),
        httpx.post(f"{server.url}/v1/images/generations", json={"model": MODEL, "size": "64x64"}),
        httpx.post(f"{server.url}/{ENDPOINT}", timeout=120,
                   json={"prompt": "a fox", "image_size": {"width": 64, "height": 64}}),
    ]  # fmt: skip
    streamed = {"prompt": "streamed", "image_size": {"width": 64, "height": 64}, "num_images": 2}
    with httpx.stream("POST", f"{server.url}/{ENDPOINT}/stream", json=streamed, timeout=120) as stream:
        events = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
    queued = {"prompt": "queued", "image_size": "square"}
    submitted = httpx.post(f"{server.url}/queue/{ENDPOINT}", json=queued)
    status_url = submitted.json()["status_url"]
    wait_until(lambda: httpx.get(status_url).json()["status"] == "COMPLETED")
    result = httpx.get(submitted.json()["response_url"])
    statuses = [answer.status_code for answer in answers] + [stream.status_code, result.status_code]
    images = sum(len(answer.json().get("data") or answer.json().get("images") or []) for answer in answers)
    return statuses, images + len(events[-1]["images"]) + len(result.json()["images"])


def stats(server: LiveServer) -> dict:
    answer = httpx.get(server.url + "/v1/stats")
    assert answer.status_code == 200, answer.text
    return answer.json()
