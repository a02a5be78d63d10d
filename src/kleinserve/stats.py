"""Request stats: what gateway pages publish for a provider, per served model (requests, success rate,
p50/p95 end-to-end latency and time to first byte, images/s, queue depth), behind /v1/stats and /status.

Every generation request an API server answers is a `RequestSample` in the job store, so every API server
reports the same figures, and a restart forgets nothing. Samples are written in the background: a slow or
full disk never holds up or fails the response being measured.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

import numpy as np

from kleinserve.jobs import JobStore, RequestSample
from kleinserve.metrics import Metrics

log = logging.getLogger("kleinserve")

WINDOWS = {"1h": 3600.0, "24h": 86400.0}  # what /status shows
SERIES_POINTS = 12  # latency chart points per window
KEEP_MARGIN_S = 3600.0  # samples are kept this long past the longest window
FORGET_EVERY_S = 600.0


class RequestStats:
    def __init__(self, jobs: JobStore, metrics: Metrics, window_seconds: float = 3600.0):
        self.jobs = jobs
        self.metrics = metrics
        self.window_seconds = window_seconds  # the top-level window of /v1/stats (--stats-window-seconds)
        self._writes: set[asyncio.Task] = set()

    @property
    def keep_seconds(self) -> float:
        return max(self.window_seconds, *WINDOWS.values()) + KEEP_MARGIN_S

    def observe(self, model: str, seconds: float, ttfb: float, status: int, images: int) -> None:
        """A generation request was answered (`images` delivered): Prometheus now, the store in the
        background."""
        self.metrics.observe_generation_request(model, seconds, ttfb)
        sample = RequestSample(time.time(), model, seconds, ttfb, status, images if status < 400 else 0)
        task = asyncio.ensure_future(self.jobs.record_sample(sample))
        self._writes.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not record a request sample for /v1/stats: %s", task.exception())

    async def forget_old_samples(self) -> None:
        """Runs until cancelled: samples older than the longest window (plus a margin) are deleted."""
        while True:
            try:
                await self.jobs.forget_samples(time.time() - self.keep_seconds)
            except Exception:  # e.g. a full disk: try again next round
                log.exception("forgetting old request samples failed; retrying later")
            await asyncio.sleep(FORGET_EVERY_S)

    async def report(self, models: Iterable[str], queue_depths: dict[str, int]) -> dict:
        """Per served model (also one with no requests yet), over the configured window and over each of
        WINDOWS, with a latency series for a chart."""
        now = time.time()
        samples = await self.jobs.samples(now - max(self.window_seconds, *WINDOWS.values()))
        by_model = {model: [s for s in samples if s.model == model] for model in models}
        return {
            "window_seconds": self.window_seconds,
            "models": {
                model: summarize([s for s in mine if s.at >= now - self.window_seconds])
                for model, mine in by_model.items()
            },
            "windows": {
                name: {
                    "seconds": span,
                    "models": {
                        model: window_summary(mine, now, span, queue_depths.get(model, 0))
                        for model, mine in by_model.items()
                    },
                }
                for name, span in WINDOWS.items()
            },
        }


def window_summary(samples: list[RequestSample], now: float, span: float, queue_depth: int) -> dict:
    """`summarize` over the `span` seconds before `now`, plus throughput, queue depth and a latency series
    of SERIES_POINTS equal intervals (oldest first)."""
    inside = [s for s in samples if s.at >= now - span]
    images = sum(s.images for s in inside)
    return {
        **summarize(inside),
        "images": images,
        "images_per_second": round(images / span, 6),
        "queue_depth": queue_depth,
        "series": latency_series(inside, now, span),
    }


def latency_series(samples: list[RequestSample], now: float, span: float) -> list[dict]:
    step = span / SERIES_POINTS
    start = now - span
    buckets: list[list[RequestSample]] = [[] for _ in range(SERIES_POINTS)]
    for s in samples:
        buckets[min(SERIES_POINTS - 1, max(0, int((s.at - start) // step)))].append(s)
    return [
        {"start": round(start + i * step, 3), "requests": len(bucket), **_latency(bucket)}
        for i, bucket in enumerate(buckets)
    ]


def _latency(samples: list[RequestSample]) -> dict:
    figures = _percentiles([s.seconds for s in samples if s.status < 400])
    return {"p50_ms": figures["p50"], "p95_ms": figures["p95"]}


def summarize(samples: list[RequestSample]) -> dict:
    """Success rate counts server failures (5xx) against us; rejected bad input (4xx) is reported apart."""
    succeeded = [s for s in samples if s.status < 400]
    failed = sum(1 for s in samples if s.status >= 500)
    rejected = len(samples) - len(succeeded) - failed
    served = len(succeeded) + failed
    return {
        "requests": len(samples),
        "succeeded": len(succeeded),
        "failed": failed,
        "rejected": rejected,
        "success_rate": round(len(succeeded) / served, 4) if served else None,
        "generation_ms": _percentiles([s.seconds for s in succeeded]),
        "time_to_first_byte_ms": _percentiles([s.ttfb for s in succeeded]),
    }


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "mean": None}
    array = np.asarray(values) * 1000
    return {
        "p50": round(float(np.percentile(array, 50)), 1),
        "p95": round(float(np.percentile(array, 95)), 1),
        "mean": round(float(array.mean()), 1),
    }
