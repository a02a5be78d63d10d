"""GET /v1/webhooks/default/secret: the key webhooks are signed with, in Replicate's endpoint and shape
({"key": "whsec_..."}), for Replicate's clients (validateWebhook, replicate.webhooks.default.secret.get) and
any Standard Webhooks verifier. Behind the API keys like other routes; every key sees the server's one secret.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from kleinserve.api import openapi_docs as docs
from kleinserve.api.errors import OpenAIError
from kleinserve.service.facade import ImageService


class WebhookSecret(BaseModel):
    key: str = Field(description="the Standard Webhooks signing secret, whsec_ and the base64 key")


def router(service: ImageService) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/webhooks/default/secret", responses=docs.answers(WebhookSecret, OpenAIError))
    async def webhook_secret() -> WebhookSecret:
        """The secret that signs this server's webhooks (webhook-signature, Standard Webhooks v1)."""
        return WebhookSecret(key=service.webhook_secret)

    return routes
