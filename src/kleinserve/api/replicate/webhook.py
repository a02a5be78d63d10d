"""Replicate's webhook: a prediction created with `webhook` has the prediction object POSTed there, signed
with Standard Webhooks headers (webhook-id, webhook-timestamp, webhook-signature; the secret is GET
/v1/webhooks/default/secret's), which replicate's `validate_webhook` / `validateWebhook` check.

It is sent once, when the prediction has ended (`completed`), from the job's record by whichever API server
claims it, so a prediction that ends after a restart still reports. `webhook_events_filter` is honoured as
far as that goes: with `completed` or `output` in it (an image model's output arrives as it completes) the
final prediction is sent; a filter of only `start` and/or `logs` sends nothing.
"""

from __future__ import annotations

from kleinserve.api.replicate.prediction import prediction
from kleinserve.service.facade import ImageService

SENT_FOR = {"completed", "output"}


def sender(service: ImageService):
    """Called when any job ends: a Replicate prediction with a webhook gets its final state."""

    async def send(job_id: str) -> None:
        job = await service.job(job_id)
        if job is None or job.params.get("dialect") != "replicate" or not job.params.get("webhook"):
            return
        if not SENT_FOR & set(job.params.get("webhook_events_filter") or SENT_FOR):
            return
        await service.deliver_webhook(job_id, job.params["webhook"], await prediction(service, job))

    return send
