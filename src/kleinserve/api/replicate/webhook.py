"""Replicate's webhook: a prediction created with `webhook` has the prediction object, as it is at that
moment, POSTed there on each event its `webhook_events_filter` names (all four when it names none), signed
with Standard Webhooks headers (webhook-id, webhook-timestamp, webhook-signature; the secret is GET
/v1/webhooks/default/secret's), which replicate's `validate_webhook` / `validateWebhook` check:

    start       once, when the prediction starts processing
    logs        when its logs change (a log line, a denoising step), at most once every 500 ms
    output      when its output is there (an image model's output comes as it succeeds)
    completed   once, at the end: succeeded, failed or canceled; retried with backoff

As Replicate does, only `completed` is retried; the other events are sent once each, in that order, and none
after `completed`. Each event is its own message (webhook-id `msg_<id>_start`, `msg_<id>_logs_<n>`,
`msg_<id>_output`; `completed` keeps `msg_<id>` on every retry).

Who sends them: with start or logs in the filter, the API server that created the prediction follows it
(`follow`) and sends every event, the end too; it holds the job's webhook delivery from the moment it is
recorded, so no other process sends the end meanwhile (service/webhook_queue.py). Without them, or when
that server stopped (the hold is released) or died (the hold runs out), the end (output, completed) is sent
from the job's record by whichever API server claims it, as for the other dialects. So a prediction requeued
after its worker died keeps its follower: `start` is not sent again, and `logs` go on as the steps start
over. A follower lost with its server loses the start and logs events not yet sent; its end is still sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from kleinserve.api.replicate.prediction import prediction
from kleinserve.job import Job
from kleinserve.service.facade import ImageService
from kleinserve.service.webhooks import Delivery

log = logging.getLogger("kleinserve")

FIELD = "webhook"
FOLLOWED = {"start", "logs"}  # the events that need a follower: output and completed come at the end
THROTTLE_S = 0.5  # logs events at most this often, as Replicate sends them
WAKE_S = 0.5  # between looks at a followed prediction (the store's change signal wakes it sooner)


def follows(events: list[str]) -> bool:
    """Whether a prediction with this filter is followed while it runs."""
    return bool(FOLLOWED & set(events))


def sender(service: ImageService):
    """Called when any job ends: a Replicate prediction with a webhook nobody follows gets its end."""

    async def send(job_id: str) -> None:
        job = await service.job(job_id)
        if job is None or job.params.get("dialect") != "replicate" or not job.params.get("webhook"):
            return
        await _end(service, job)

    return send


@dataclass
class _Told:
    """What a follower has sent so far."""

    started: bool = False
    log_lines: int = 0
    logs_sent: int = 0
    logs_at: float = float("-inf")


async def follow(service: ImageService, job_id: str) -> None:
    """Sends the prediction's events while it runs and then its end; on leaving early (this server stops),
    hands the end back to the webhook queue."""
    ended = False
    try:
        ended = await _follow(service, job_id)
    finally:
        with contextlib.suppress(Exception):
            await (service.webhook_queue.done if ended else service.webhook_queue.release)(job_id)


async def _follow(service: ImageService, job_id: str) -> bool:
    """True once the end was sent (or the job is gone); False when this server is stopping."""
    told, renewed = _Told(), time.monotonic()
    while not service.shutting_down:
        job = await service.until_ended(job_id, WAKE_S)
        if job is None:
            return True
        await _while_running(service, job, told)
        if job.status.finished:
            await _end(service, job)
            return True
        if time.monotonic() - renewed > service.webhook_queue.lease_s / 3:
            await service.webhook_queue.hold(job_id)
            renewed = time.monotonic()
    return False


async def _while_running(service: ImageService, job: Job, told: _Told) -> None:
    """start (once it started), then logs when their lines changed and the throttle allows; an ended job's
    last logs wait out the throttle, a running job's are sent at a later look."""
    if job.started_at is None:
        return
    events = job.params["webhook_events_filter"]
    body = await prediction(service, job)
    if not told.started:
        told.started = True
        if "start" in events:
            await _event(service, job, body, "start")
    lines = body["logs"].count("\n")
    if "logs" not in events or lines == told.log_lines:
        return
    wait = told.logs_at + THROTTLE_S - time.monotonic()
    if wait > 0:
        if not job.status.finished:
            return
        await asyncio.sleep(wait)
    told.log_lines, told.logs_at, told.logs_sent = lines, time.monotonic(), told.logs_sent + 1
    await _event(service, job, body, f"logs_{told.logs_sent}")


async def _end(service: ImageService, job: Job) -> None:
    """output (when it succeeded with images), then completed (retried), as the filter asks."""
    events = job.params.get("webhook_events_filter") or ()
    body = await prediction(service, job)
    if "output" in events and body["output"]:
        await _event(service, job, body, "output")
    if "completed" in events:
        await service.deliver_webhook(job.id, job.params["webhook"], body, Delivery(FIELD))


async def _event(service: ImageService, job: Job, body: dict, event: str) -> None:
    delivery = Delivery(FIELD, event=event, once=True)
    await service.deliver_webhook(job.id, job.params["webhook"], body, delivery)
