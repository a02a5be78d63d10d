"""Per-request measurements: HTTP counts and latency by route, and for generation requests the end-to-end
time, time to first byte and images delivered per model (what gateways publish), taken where the bytes leave
the server. A dialect names the request's model, then the images it delivered, with report_model and
report_images: one Generation record in the request's state, read here when the answer is out."""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi import Request

from kleinserve.metrics import Metrics
from kleinserve.service.stats import RequestStats

STATE_KEY = "generation"  # request.state.generation


@dataclass
class Generation:
    """What a generation request reports for per-model stats: its model, and the images it delivered."""

    model: str
    images: int = 0


def report_model(http: Request, model: str) -> None:
    """The request runs `model` (an id): its latency counts in that model's stats, whatever the outcome."""
    setattr(http.state, STATE_KEY, Generation(model))


def report_images(http: Request, count: int) -> None:
    """The images the request delivered (per-model images/s); after report_model."""
    generation: Generation | None = getattr(http.state, STATE_KEY, None)
    if generation is not None:
        generation.images = count


class RequestMetricsMiddleware:
    def __init__(self, app, metrics: Metrics, stats: RequestStats):
        self.app = app
        self.metrics = metrics
        self.stats = stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        first_byte: float | None = None
        status = 500

        async def send_measured(message):
            nonlocal first_byte, status
            if message["type"] == "http.response.start":
                status = message["status"]
                first_byte = time.perf_counter() - start
            await send(message)

        try:
            await self.app(scope, receive, send_measured)
        finally:
            self._record(scope, status, time.perf_counter() - start, first_byte)

    def _record(self, scope, status: int, seconds: float, first_byte: float | None) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        self.metrics.observe_http(route, scope["method"], status, seconds)
        generation: Generation | None = scope.get("state", {}).get(STATE_KEY)
        if generation is not None:
            self.stats.observe(generation.model, seconds, first_byte or seconds, status, generation.images)
