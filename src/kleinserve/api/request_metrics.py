"""Per-request measurements: HTTP counts and latency by route, and for generation requests the end-to-end
time, time to first byte and images delivered per model (what gateways publish), taken where the bytes leave
the server. A dialect names the request's model (and then the images it delivered) in the request's state."""

from __future__ import annotations

import time

from kleinserve.metrics import Metrics
from kleinserve.service.stats import RequestStats


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
        state = scope.get("state", {})
        if state.get("model") is not None:
            self.stats.observe(state["model"], seconds, first_byte or seconds, status, state.get("images", 0))
