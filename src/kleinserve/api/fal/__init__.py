"""The fal dialect: routes.py (run, stream, submit), schemas.py (the input they validate, the outputs, as
/openapi.json shows them), output.py (the output JSON), queue.py (a queued request's status, result and
cancel), stream.py (server-sent events), webhook.py (fal_webhook), proxy.py (@fal-ai/client's proxyUrl)."""

from kleinserve.api.fal.routes import router
from kleinserve.api.fal.webhook import webhook_sender

__all__ = ["router", "webhook_sender"]
