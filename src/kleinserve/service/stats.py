"""Request stats: what gateway pages publish for a provider, per served model (requests, success rate,
p50/p95 end-to-end latency and time to first byte, images/s, queue depth), behind /v1/stats and /status.

Every generation request an API server answers is a `RequestSample` in the job store, so every API server
reports the same figures, and a restart forgets nothing. Samples are written in the background: a slow or
full disk never holds up or fails the response being measured. A day of a busy server is ~10^5 samples:
reading them all at every refresh of /status would hold the store's thread for a second, so the settled
part of the day is read again only every few minutes (`_History`) and the figures are numpy arithmetic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields

import numpy as np

from kleinserve.job import RequestSample
from kleinserve.jobs.contract import JobStore
from kleinserve.metrics import Metrics

log = logging.getLogger("kleinserve")

WINDOWS = {"1h": 3600.0, "24h": 86400.0}  # what /status shows
SERIES_POINTS = 12  # latency chart points per window
KEEP_MARGIN_S = 3600.0  # samples are kept this long past the longest window
FORGET_EVERY_S = 600.0
REREAD_S = 300.0  # the settled samples are read again this often (and trimmed to the window)
SETTLED_S = 60.0  # a sample is in the store within this long of its `at` (written right after the answer)


class RequestStats:
    def __init__(self, jobs: JobStore, metrics: Metrics, window_seconds: float = 3600.0):
        self.jobs = jobs
        self.metrics = metrics
        self.window_seconds = window_seconds  # the top-level window of /v1/stats (--stats-window-seconds)
        self._writes: set[asyncio.Task] = set()
        self._history = _History(jobs)

    @property
    def keep_seconds(self) -> float:
        return self.longest + KEEP_MARGIN_S

    @property
    def longest(self) -> float:
        return max(self.window_seconds, *WINDOWS.values())

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
        history = await self._history.read(now - self.longest, now)
        columns = {model: history.get(model, Columns.empty()) for model in models}
        configured = now - self.window_seconds
        return {
            "window_seconds": self.window_seconds,
            "models": {model: summarize(mine.since(configured)) for model, mine in columns.items()},
            "windows": {
                name: {
                    "seconds": span,
                    "models": {
                        model: window_summary(mine, now, span, queue_depths.get(model, 0))
                        for model, mine in columns.items()
                    },
                }
                for name, span in WINDOWS.items()
            },
        }


@dataclass(frozen=True)
class Columns:
    """Samples of one model as arrays (seconds, not milliseconds)."""

    at: np.ndarray
    seconds: np.ndarray
    ttfb: np.ndarray
    status: np.ndarray
    images: np.ndarray

    @classmethod
    def of(cls, samples: list[RequestSample]) -> Columns:
        table = np.array([(s.at, s.seconds, s.ttfb, s.status, s.images) for s in samples], dtype=float)
        return cls(*table.reshape(-1, 5).T)

    @classmethod
    def empty(cls) -> Columns:
        return cls.of([])

    def __len__(self) -> int:
        return len(self.at)

    def where(self, mask: np.ndarray) -> Columns:
        return Columns(*(getattr(self, f.name)[mask] for f in fields(self)))

    def since(self, start: float) -> Columns:
        return self.where(self.at >= start)

    def __add__(self, other: Columns) -> Columns:
        pairs = ((getattr(self, f.name), getattr(other, f.name)) for f in fields(self))
        return Columns(*(np.concatenate(pair) for pair in pairs))


def by_model(samples: list[RequestSample]) -> dict[str, Columns]:
    grouped: dict[str, list[RequestSample]] = {}
    for sample in samples:
        grouped.setdefault(sample.model, []).append(sample)
    return {model: Columns.of(mine) for model, mine in grouped.items()}


class _History:
    """The samples of the longest window, per model: the settled part (older than SETTLED_S when read) is
    kept for REREAD_S; each read fetches only what came after it."""

    def __init__(self, jobs: JobStore):
        self.jobs = jobs
        self._settled: dict[str, Columns] = {}
        self._settled_until = -np.inf  # samples at or after this are read at every call
        self._read_at = -np.inf

    async def read(self, since: float, now: float) -> dict[str, Columns]:
        if now - self._read_at > REREAD_S:
            everything = by_model(await self.jobs.samples(since))
            self._settled_until, self._read_at = now - SETTLED_S, now
            self._settled = {m: c.where(c.at < self._settled_until) for m, c in everything.items()}
            return everything
        recent = by_model(await self.jobs.samples(self._settled_until))
        models = {*self._settled, *recent}
        empty = Columns.empty()
        return {m: self._settled.get(m, empty).since(since) + recent.get(m, empty) for m in models}


def window_summary(samples: Columns, now: float, span: float, queue_depth: int) -> dict:
    """`summarize` over the `span` seconds before `now`, plus throughput, queue depth and a latency series
    of SERIES_POINTS equal intervals (oldest first)."""
    inside = samples.since(now - span)
    images = int(inside.images.sum())
    return {
        **summarize(inside),
        "images": images,
        "images_per_second": round(images / span, 6),
        "queue_depth": queue_depth,
        "series": latency_series(inside, now, span),
    }


def latency_series(samples: Columns, now: float, span: float) -> list[dict]:
    step = span / SERIES_POINTS
    start = now - span
    interval = np.clip((samples.at - start) // step, 0, SERIES_POINTS - 1)
    series = []
    for i in range(SERIES_POINTS):
        mine = samples.where(interval == i)
        latency = _percentiles(mine.seconds[mine.status < 400])
        point = {"start": round(start + i * step, 3), "requests": len(mine)}
        series.append({**point, "p50_ms": latency["p50"], "p95_ms": latency["p95"]})
    return series


def summarize(samples: Columns) -> dict:
    """Success rate counts server failures (5xx) against us; rejected bad input (4xx) is reported apart."""
    ok = samples.status < 400
    succeeded, failed = int(ok.sum()), int((samples.status >= 500).sum())
    served = succeeded + failed
    return {
        "requests": len(samples),
        "succeeded": succeeded,
        "failed": failed,
        "rejected": len(samples) - succeeded - failed,
        "success_rate": round(succeeded / served, 4) if served else None,
        "generation_ms": _percentiles(samples.seconds[ok]),
        "time_to_first_byte_ms": _percentiles(samples.ttfb[ok]),
    }


def _percentiles(seconds: np.ndarray) -> dict:
    if not len(seconds):
        return {"p50": None, "p95": None, "mean": None}
    array = seconds * 1000
    return {
        "p50": round(float(np.percentile(array, 50)), 1),
        "p95": round(float(np.percentile(array, 95)), 1),
        "mean": round(float(array.mean()), 1),
    }
