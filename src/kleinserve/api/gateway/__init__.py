"""The Vercel AI Gateway image dialect (@ai-sdk/gateway's image model): routes.py (POST /v1/ai/image-model),
schemas.py (the body it validates and the answers, as /openapi.json shows them)."""

from kleinserve.api.gateway.routes import router

__all__ = ["router"]
