"""BFL's webhook: a task submitted with `webhook_url` has its result POSTed there when it ends, as BFL's
webhook guide shows: `{"id", "status": "Ready", "result": {"sample", "prompt", "seed"}, "timestamp"}`, or
`{"id", "status": "Error" | "Content Moderated", "error", "message", "timestamp"}`. With `webhook_secret`
the body is signed as BFL signs it: `X-BFL-Signature: sha256=<hex HMAC-SHA256 of the body bytes>`. Every
webhook also carries the server's Standard Webhooks headers (webhook_signing.py).

The URL is checked at submit (api/webhook_target.py: private addresses only where allowed); the sender works
from the job's record, so a task run again after a restart reports too."""

from __future__ import annotations

import hashlib
import hmac
import time

from kleinserve.api.bfl.result import task_status
from kleinserve.job import Job
from kleinserve.service.facade import ImageService
from kleinserve.service.webhooks import Delivery

FIELD = "webhook_url"  # the request field that names the URL


def bfl_signature(secret: str, content: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()


def webhook_sender(service: ImageService):
    """Called when any job ends: a BFL task submitted with webhook_url gets its webhook, carrying what
    get_result answers for it, so the webhook and polling never disagree."""

    async def send(job_id: str) -> None:
        job = await service.job(job_id)
        url = job.params.get("webhook") if job is not None else None
        if job is None or job.params.get("dialect") != "bfl" or not url:
            return
        body = await _body(job, await task_status(service, job, job.params["base_url"]))
        secret = job.params.get("webhook_secret")
        headers = (lambda content: {"x-bfl-signature": bfl_signature(secret, content)}) if secret else None
        delivery = Delivery(FIELD, headers) if headers else Delivery(FIELD)
        await service.deliver_webhook(job_id, url, body, delivery)

    return send


async def _body(job: Job, status: dict) -> dict:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(job.finished_at or time.time()))
    body = {"id": job.id, "status": status["status"], "timestamp": stamp}
    if status["status"] == "Ready":
        return {**body, "result": status["result"]}
    details = status.get("details") or {}
    message = details.get("error") or details.get("moderation") or status["status"]
    error = "content_moderated" if status["status"] == "Content Moderated" else "generation_failed"
    return {**body, "error": error, "message": message}
