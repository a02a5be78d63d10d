"""Black Forest Labs' API dialect (api.bfl.ai, @ai-sdk/black-forest-labs): routes.py (POST /v1/{model},
GET /v1/get_result), result.py (a task's state), webhook.py (webhook_url, signed with webhook_secret),
schemas.py (the body it validates and the answers, as /openapi.json shows them)."""

from kleinserve.api.bfl.routes import router
from kleinserve.api.bfl.webhook import webhook_sender

__all__ = ["router", "webhook_sender"]
