"""Webhook delivery: POST a job's outcome to the URL its submitter gave, retrying with backoff.

A delivery succeeds on any 2xx answer. Failures (an error status, a refused connection, a timeout) are
retried after base, 2*base, 4*base, ... seconds, up to the configured number of attempts. Every attempt is
written to the job's logs. Receivers must be idempotent: a slow 2xx that times out is sent again.

Every attempt is signed (kleinserve/webhook_signing.py): the body is serialized once, so the bytes signed
are the bytes sent, and the webhook-id is the job's (`msg_<job id>`), the same on each retry and from any
API server. A job may also have events sent while it runs (Replicate's start, logs, output): each is its own
message (`msg_<job id>_<event>`), sent `once`: one attempt, not retried (as Replicate does not retry them)
and not written to the job's logs (which the events themselves report).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kleinserve.errors import InvalidRequest
from kleinserve.service.outbound import Outbound
from kleinserve.webhook_signing import signed_headers

log = logging.getLogger("kleinserve")

JobLog = Callable[[str, str, str], Awaitable[None]]  # (job_id, message, level)


@dataclass(frozen=True)
class Delivery:
    """What a dialect adds to a webhook: the request field that named its URL (errors and the outbound guard
    name it) and headers computed from the exact bytes sent (a dialect's own signature, e.g. BFL's)."""

    field: str = "fal_webhook"
    headers: Callable[[bytes], dict[str, str]] = lambda content: {}
    event: str | None = None  # an event sent while the job runs (its own webhook-id); None: the job's end
    once: bool = False  # one attempt, kept off the job's logs (an event while it runs)


class WebhookSender:
    def __init__(
        self,
        outbound: Outbound,
        job_log: JobLog,
        *,
        secret: str,
        attempts: int,
        retry_base_s: float,
        timeout_s: float,
    ):
        self.outbound = outbound
        self.secret = secret
        self.job_log = job_log
        self.attempts = attempts
        self.retry_base_s = retry_base_s
        self.timeout_s = timeout_s

    async def deliver(self, job_id: str, url: str, body: dict, delivery: Delivery | None = None) -> bool:
        """True once the receiver answered 2xx; False after the last failed attempt."""
        delivery = delivery or Delivery()
        content = json.dumps(body, separators=(",", ":")).encode()
        if delivery.once:
            return await self._once(job_id, url, content, delivery)
        for attempt in range(1, self.attempts + 1):
            outcome = await self._attempt(job_id, url, content, delivery)
            if outcome is None:
                await self.job_log(job_id, f"webhook delivered (attempt {attempt})", "INFO")
                return True
            if attempt == self.attempts:
                await self.job_log(
                    job_id, f"webhook attempt {attempt}/{self.attempts} failed: {outcome}; giving up", "ERROR"
                )
                log.warning("webhook for job %s not delivered: %s", job_id, outcome)
                return False
            delay = self.retry_base_s * 2 ** (attempt - 1)
            message = f"webhook attempt {attempt}/{self.attempts} failed: {outcome}; retrying in {delay:g} s"
            await self.job_log(job_id, message, "WARNING")
            await asyncio.sleep(delay)
        return False

    async def _once(self, job_id: str, url: str, content: bytes, delivery: Delivery) -> bool:
        outcome = await self._attempt(job_id, url, content, delivery)
        if outcome is not None:
            log.warning("webhook event %s of job %s not delivered: %s", delivery.event, job_id, outcome)
        return outcome is None

    async def _attempt(self, job_id: str, url: str, content: bytes, delivery: Delivery) -> str | None:
        """None on success, else what went wrong."""
        headers = {  # signed per attempt: a receiver checks webhook-timestamp against its clock
            "content-type": "application/json",
            **signed_headers(self.secret, message_id(job_id, delivery.event), content),
            **delivery.headers(content),
        }
        field = delivery.field
        try:
            async with asyncio.timeout(self.timeout_s):
                request = self.outbound.request("POST", url, field, content=content, headers=headers)
                async with request as response:
                    if 200 <= response.status_code < 300:
                        return None
                    return f"HTTP {response.status_code}"
        except TimeoutError:
            return f"no answer within {self.timeout_s:g} s"
        except InvalidRequest as exc:
            return exc.reason


def message_id(job_id: str, event: str | None = None) -> str:
    """The webhook-id of a job's webhook (one message per job, so every retry keeps it) or of an event sent
    while it runs."""
    return f"msg_{job_id}" if event is None else f"msg_{job_id}_{event}"
