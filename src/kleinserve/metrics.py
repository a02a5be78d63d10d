"""Prometheus metrics: one registry per server, no globals. (The per-model figures of /v1/stats and /status
are read from the job store: stats.py.)"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "kleinserve_http_requests",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "kleinserve_http_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.generation_seconds = Histogram(
            "kleinserve_generation_seconds",
            "End-to-end latency of generation requests (received -> response sent)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb_seconds = Histogram(
            "kleinserve_time_to_first_byte_seconds",
            "Generation requests: received -> first response byte",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "kleinserve_queue_depth", "Jobs waiting for the engine", ["model"], registry=r
        )
        self.batch_images = Histogram(
            "kleinserve_batch_images", "Images per engine batch", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.stage_seconds = Histogram(
            "kleinserve_stage_seconds",
            "Seconds per pipeline stage (text, references, denoise, decode per batch; encode, store per job)",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.jobs = Counter("kleinserve_jobs", "Finished jobs by outcome", ["model", "status"], registry=r)
        self.images_generated = Counter(
            "kleinserve_images_generated", "Images generated", ["model"], registry=r
        )
        self.megapixels_generated = Counter(
            "kleinserve_megapixels_generated", "Megapixels generated", ["model"], registry=r
        )
        self.usage_engine_seconds = Counter(
            "kleinserve_usage_engine_seconds",
            "Engine seconds accounted to succeeded jobs (each job's share of its batches)",
            ["model"],
            registry=r,
        )
        self.usage_cost = Counter(
            "kleinserve_usage_cost_usd", "Cost of succeeded jobs at the --price set", ["model"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_seconds.labels(route).observe(seconds)

    def observe_generation_request(self, model: str, seconds: float, ttfb: float) -> None:
        self.generation_seconds.labels(model).observe(seconds)
        self.ttfb_seconds.labels(model).observe(ttfb)

    def observe_batch(self, model: str, images: int, timings: dict[str, float]) -> None:
        self.batch_images.labels(model).observe(images)
        self.observe_stages(model, timings)

    def observe_stages(self, model: str, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.stage_seconds.labels(model, stage).observe(seconds)

    def observe_images(self, model: str, count: int, width: int, height: int) -> None:
        self.images_generated.labels(model).inc(count)
        self.megapixels_generated.labels(model).inc(count * width * height / 1e6)

    def observe_usage(self, model: str, engine_seconds: float, cost_usd: float | None) -> None:
        self.usage_engine_seconds.labels(model).inc(engine_seconds)
        if cost_usd is not None:
            self.usage_cost.labels(model).inc(cost_usd)
