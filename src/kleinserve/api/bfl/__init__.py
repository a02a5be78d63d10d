"""Black Forest Labs' API dialect (api.bfl.ai, @ai-sdk/black-forest-labs): routes.py (POST /v1/{model},
GET /v1/get_result), schemas.py (the body it validates and the answers, as /openapi.json shows them)."""

from kleinserve.api.bfl.routes import router

__all__ = ["router"]
