"""Webhook delivery driven from the job store, so it does not matter which process ran the job.

A job submitted with a webhook is recorded with a pending delivery (jobs.py, Job.webhook). Once the job has
ended, wherever it ran, one API process claims the delivery under a lease (SQLite: its single writer;
PostgreSQL: FOR UPDATE SKIP LOCKED), sends it with its retries (webhooks.py, through the dialect's sender)
and marks it done. The lease covers every attempt with its timeout and backoff; a process that dies while
sending leaves the lease to run out, and another process sends the webhook again: receivers must be
idempotent, as for any retried webhook.

Where the models run in the same process, a job's end wakes the queue at once; an API server whose jobs end
in workers polls every POLL_S.

A dialect that sends events while a job runs (Replicate's start and logs) holds the job's delivery from the
moment it is submitted (the job is added with `webhook_held_s`), renews the hold while it follows the job,
and sends the end itself; the queue claims it only if that hold runs out (its process died) or is released
(it stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from kleinserve.jobs.contract import JobStore

log = logging.getLogger("kleinserve")

Sender = Callable[[str], Awaitable[None]]  # sends the job's webhook (and its retries), given its id
POLL_S = 0.5
CLAIM_LIMIT = 16
LEASE_MARGIN_S = 30.0


class WebhookQueue:
    def __init__(self, jobs: JobStore, *, attempts: int, timeout_s: float, retry_base_s: float):
        self.jobs = jobs
        backoff = retry_base_s * (2 ** (attempts - 1) - 1)  # the sum of the delays between attempts
        self.lease_s = attempts * timeout_s + backoff + LEASE_MARGIN_S
        self._senders: list[Sender] = []
        self._due = asyncio.Event()
        self._sending: set[asyncio.Task] = set()

    def add_sender(self, sender: Sender) -> None:
        """`await sender(job_id)` for each ended job with a webhook: the dialect renders and sends it."""
        self._senders.append(sender)

    async def hold(self, job_id: str) -> None:
        """The job's delivery stays with the caller for another lease_s (a follower renews it)."""
        await self.jobs.hold_webhook(job_id, time.time() + self.lease_s)

    async def release(self, job_id: str) -> None:
        """The caller stops following the job: the queue sends its end (once it ended)."""
        await self.jobs.hold_webhook(job_id, None)
        self.wake()

    async def done(self, job_id: str) -> None:
        """The caller sent the job's end itself."""
        await self.jobs.webhook_done(job_id)

    def wake(self) -> None:
        """A job ended in this process: its webhook may be due."""
        self._due.set()

    async def run(self) -> None:
        while True:
            self._due.clear()
            try:
                due = await self.jobs.claim_webhooks(limit=CLAIM_LIMIT, lease_s=self.lease_s)
            except Exception:
                log.exception("claiming due webhooks failed; retrying later")
                due = []
            for job_id in due:
                task = asyncio.create_task(self._send(job_id), name=f"webhook-{job_id}")
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
            if len(due) < CLAIM_LIMIT:
                await _until(self._due.wait(), POLL_S)

    async def _send(self, job_id: str) -> None:
        try:
            for sender in self._senders:
                await sender(job_id)
        except Exception:  # a bug in rendering: never retried in a loop, the job's record keeps its result
            log.exception("sending the webhook of job %s failed", job_id)
        await self.jobs.webhook_done(job_id)

    async def stop(self) -> None:
        for task in list(self._sending):
            task.cancel()
        for task in list(self._sending):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _until(awaitable, timeout: float) -> None:
    """Until `awaitable` is done or `timeout`. Not asyncio.wait_for: on Python 3.11 a cancel that comes as the
    awaitable finishes is lost there, and a stopping server would wait for this loop forever."""
    waiting = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait({waiting}, timeout=timeout)
    finally:
        waiting.cancel()
