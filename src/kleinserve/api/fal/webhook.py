"""fal's webhook: a request queued with `?fal_webhook=<url>` has fal's webhook body POSTed there when it
ends: `{"request_id", "gateway_request_id", "status": "OK" | "ERROR", "payload", "error"}`.

The URL is checked when the request is submitted; the sender is registered with the service once, when the
app is assembled (create_app), and sends from the job's record, so a job run again after a restart reports
too."""

from __future__ import annotations

from kleinserve.api.fal.output import finished_output
from kleinserve.api.webhook_target import check_webhook_url
from kleinserve.service.facade import ImageService


async def check_webhook(service: ImageService, url: str) -> None:
    """A 400 naming fal_webhook unless `url` is an http(s) URL of a host this server may call."""
    await check_webhook_url(service, url, "fal_webhook")


def webhook_sender(service: ImageService):
    """Called when any job ends: a fal queue job submitted with ?fal_webhook= gets its webhook."""

    async def send(job_id: str) -> None:
        job = await service.job(job_id)
        if job is None or job.params.get("dialect") != "fal" or not job.params.get("webhook"):
            return
        body = {
            "request_id": job_id,
            "gateway_request_id": job_id,
            "status": "OK",
            "payload": None,
            "error": None,
        }
        try:
            body["payload"] = await finished_output(service, job, job.params["base_url"])
        except Exception as exc:
            message = getattr(exc, "message", None) or str(exc)
            body.update(status="ERROR", error=message, payload={"detail": message})
        await service.deliver_webhook(job_id, job.params["webhook"], body)

    return send
