"""Replicate webhook deliveries as a test receives them: which event each was, read off its webhook-id."""

from __future__ import annotations

import json

from support.local_hosts import WebhookReceiver


def webhook_events(
    webhooks: WebhookReceiver, name: str, prediction_id: str, last: str = "completed", timeout: float = 30.0
) -> list[tuple[str, dict]]:
    """(event, body) of each delivery to /{name}, in the order received, once `last` arrived; the event read
    off its webhook-id (msg_<id> is completed, msg_<id>_start, _logs_<n>, _output the others)."""
    deliveries = 1
    while True:
        webhooks.deliveries(name, at_least=deliveries, timeout=timeout)
        with webhooks.lock:
            raw = list(webhooks.raw[name])
        events = [(_event(headers["webhook-id"], prediction_id), json.loads(body)) for headers, body in raw]
        if events[-1][0] == last:
            return events
        deliveries = len(events) + 1


def _event(webhook_id: str, prediction_id: str) -> str:
    suffix = webhook_id.removeprefix(f"msg_{prediction_id}")
    return suffix.lstrip("_").split("_")[0] or "completed"
