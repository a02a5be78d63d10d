"""The fal dialect: routes.py (run, stream, submit), queue.py (a queued request's status, result, cancel
and webhook), stream.py (server-sent events), proxy.py (@fal-ai/client's proxyUrl)."""

from kleinserve.api.fal.routes import router

__all__ = ["router"]
