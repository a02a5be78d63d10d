"""/v1/stats: the figures gateways publish, read from the job store's request samples (so they survive a
restart and would be the same on every API server), per served model over the configured window, the last
hour and the last day."""

import asyncio
import logging
import time

import numpy as np
import pytest

from kleinserve.job import Job, RequestSample, new_job_id
from kleinserve.jobs.sqlite.store import SQLiteJobStore
from kleinserve.metrics import Metrics
from kleinserve.roles.assembly import embedded_service
from kleinserve.service.stats import SERIES_POINTS, Columns, RequestStats, latency_series, summarize
from kleinserve.settings import Settings
from kleinserve.storage.store import LocalStore

MODEL, OTHER = "flux.2-klein-4b", "flux.2-klein-base-4b"


def test_queue_depth_is_read_from_the_store(tmp_path):
    settings = Settings(models=(MODEL, OTHER), data_dir=tmp_path, warmup=False, safety_checker=False)

    async def scenario():
        jobs = SQLiteJobStore(settings.database_path)
        service = embedded_service(
            settings, jobs, LocalStore(tmp_path), Metrics()
        )  # not started: nothing runs
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
