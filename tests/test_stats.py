"""/v1/stats: the figures gateways publish, read from the job store's request samples (so they survive a
restart and would be the same on every API server), per served model over the configured window, the last
hour and the last day."""

import asyncio
import json
import logging
import time

import httpx
import numpy as np
import pytest

from kleinserve.job import Job, RequestSample, new_job_id
from kleinserve.jobs.sqlite.store import SQLiteJobStore
from kleinserve.metrics import Metrics
from kleinserve.models import Variant
from kleinserve.service.facade import ImageService
from kleinserve.service.stats import SERIES_POINTS, WINDOWS, Columns, RequestStats, latency_series, summarize
from kleinserve.settings import Settings
from kleinserve.storage.store import LocalStore

from live_server import LiveServer

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


def wait_until(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_queue_depth_is_read_from_the_store(tmp_path):
    settings = Settings(models=(MODEL, OTHER), data_dir=tmp_path, warmup=False, safety_checker=False)

    async def scenario():
        jobs = SQLiteJobStore(settings.database_path)
        service = ImageService(settings, jobs, LocalStore(tmp_path), Metrics())  # not started: nothing runs
        for _ in range(3):
            await jobs.add(Job(new_job_id(), MODEL, {}, detached=True), b"inputs")
        try:
            return await service.stats_report()
        finally:
            await jobs.close()

    report = asyncio.run(scenario())
    for window in report["windows"].values():
        assert window["models"][MODEL]["queue_depth"] == 3 and window["models"][OTHER]["queue_depth"] == 0


def test_a_report_reads_the_samples_recorded_since_the_last_one(tmp_path):
    async def scenario():
        jobs = SQLiteJobStore(tmp_path / "jobs.sqlite3")
        recorder = RequestStats(jobs, Metrics())
        try:
            await jobs.record_sample(RequestSample(time.time() - 7200, MODEL, 1.0, 0.5, 200, 1))
            first = await recorder.report([MODEL], {})  # reads the day; keeps its settled part
            recorder.observe(MODEL, 2.0, 0.5, 200, 2)
            recorder.observe(MODEL, 0.1, 0.1, 400, 0)
            while recorder._writes:
                await asyncio.sleep(0.01)
            return first, await recorder.report([MODEL], {})
        finally:
            await jobs.close()

    first, second = asyncio.run(scenario())
    counts = lambda report, window: report["windows"][window]["models"][MODEL]["requests"]  # noqa: E731
    assert (counts(first, "1h"), counts(first, "24h")) == (0, 1)
    assert (counts(second, "1h"), counts(second, "24h")) == (2, 3)
    day = second["windows"]["24h"]["models"][MODEL]
    assert (day["succeeded"], day["rejected"], day["images"]) == (2, 1, 3)
    assert day["generation_ms"]["p50"] == 1500.0 and second["models"][MODEL]["generation_ms"]["p50"] == 2000.0


def test_a_sample_that_cannot_be_written_is_logged_and_nothing_fails(tmp_path, caplog):
    class FullDisk(SQLiteJobStore):
        async def record_sample(self, sample):
            raise OSError(28, "No space left on device")

    async def scenario():
        jobs = FullDisk(tmp_path / "jobs.sqlite3")
        recorder = RequestStats(jobs, Metrics())
        try:
            recorder.observe(MODEL, 0.5, 0.1, 200, 1)  # returns at once; the write fails later
            while recorder._writes:
                await asyncio.sleep(0.01)
            return await recorder.report([MODEL], {})
        finally:
            await jobs.close()

    with caplog.at_level(logging.WARNING, logger="kleinserve"):
        report = asyncio.run(scenario())
    assert "could not record a request sample" in caplog.text and "No space left" in caplog.text
    assert report["models"][MODEL]["requests"] == 0


def test_the_latency_series_splits_the_window_into_equal_intervals():
    now, span = 10_000.0, 1200.0
    step = span / SERIES_POINTS
    samples = [
        RequestSample(now - span + 0.5 * step, MODEL, 1.0, 0.1, 200, 1),
        RequestSample(now - span + 0.6 * step, MODEL, 3.0, 0.1, 200, 1),
        RequestSample(now - 0.5 * step, MODEL, 2.0, 0.1, 500, 0),  # a failure has no latency to show
        RequestSample(now, MODEL, 4.0, 0.1, 200, 1),  # the window's end belongs to the last interval
    ]
    series = latency_series(Columns.of(samples), now, span)
    assert [point["requests"] for point in series] == [2] + [0] * (SERIES_POINTS - 2) + [2]
    assert series[0]["start"] == now - span and series[1]["start"] == pytest.approx(now - span + step)
    assert series[0]["p50_ms"] == 2000.0
    assert series[0]["p95_ms"] == pytest.approx(np.percentile([1, 3], 95) * 1000)
    assert series[-1]["p50_ms"] == 4000.0 and series[5]["p50_ms"] is None


def test_success_rate_counts_server_failures_and_not_rejected_input():
    samples = [RequestSample(0, MODEL, 1, 0.5, status, 0) for status in (200, 200, 200, 400, 422, 500, 503)]
    summary = summarize(Columns.of(samples))
    assert (summary["succeeded"], summary["rejected"], summary["failed"]) == (3, 2, 2)
    assert summary["success_rate"] == round(3 / 5, 4)
    assert summary["generation_ms"] == {"p50": 1000.0, "p95": 1000.0, "mean": 1000.0}
