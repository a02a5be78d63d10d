"""The queue's and the store's upkeep, run by every process that shares a job store (API servers and workers
alike; each step is safe when several run it at once):

- Expired leases: jobs whose worker went silent (it died, or a batch wedged) are queued again, or fail when
  out of attempts or when nobody waits for them. The store decides each job in one transaction whose
  updates re-check the lease, so two processes never requeue a job twice.
- Retention (HTTP servers, not workers): jobs older than --retention-hours are deleted with their images.
  Two processes may pick the same expired jobs; deleting a folder or a row twice is harmless (deleting what
  is already gone does nothing), so no claim is needed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from kleinserve.jobs.contract import JobStore
from kleinserve.service.outcome import Outcome
from kleinserve.service.outputs import stored_folders
from kleinserve.storage.store import Store, folder_of

log = logging.getLogger("kleinserve")

MAX_RETENTION_PAUSE_S = 600.0


class Housekeeping:
    def __init__(
        self,
        jobs: JobStore,
        store: Store,
        *,
        lease_s: float,
        max_attempts: int,
        settle: Callable[..., None],
        wake: Callable[[], None],
    ):
        """`settle(job_id, outcome)` tells a waiter here its job failed; `wake()` wakes the batchers here."""
        self.jobs = jobs
        self.store = store
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self._settle = settle
        self._wake = wake

    async def recover(self, *, store_shared: bool) -> None:
        """At the start of a process alone with its files: half-written image files are its own. Jobs the
        last process left: a store of its own (SQLite, whose data dir is locked) has only dead leases, so
        detached jobs run again and jobs whose caller went with that process fail. A shared database
        (`store_shared`, --database-url) has other live processes: only expired leases are dead there (the
        periodic requeue), and a queued job's caller may be waiting on another server."""
        if removed := await asyncio.to_thread(self.store.remove_partial_files):
            log.warning("removed %d half-written image file(s) left by a previous run", removed)
        if store_shared:
            return
        requeued, failed = await self.jobs.requeue_expired(math.inf, self.max_attempts)
        failed += await self.jobs.fail_waiting()
        if requeued or failed:
            log.warning(
                "the server stopped last time with jobs unfinished: %d queued again, %d failed "
                "(their callers are gone, or they ran out of attempts)",
                len(requeued), len(failed),
            )  # fmt: skip

    async def requeue_expired_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 2)
            try:
                requeued, failed = await self.jobs.requeue_expired(time.time(), self.max_attempts)
            except Exception:
                log.exception("requeueing expired leases failed; retrying later")
                continue
            for job_id in failed:
                self._settle(job_id, Outcome.failed("the worker running this job stopped"))
            if requeued:
                log.warning("%d job(s) whose worker stopped were queued again", len(requeued))
                self._wake()

    async def expire_old_jobs(self, retention_s: float) -> None:
        while True:
            try:
                await self.expire_jobs(time.time() - retention_s)
            except Exception:  # e.g. a full disk: try again next round
                log.exception("expiring old jobs failed; retrying later")
            await asyncio.sleep(min(max(retention_s / 4, 1.0), MAX_RETENTION_PAUSE_S))

    async def expire_jobs(self, before: float) -> int:
        jobs = await self.jobs.expired(before)
        for job in jobs:
            for folder in stored_folders(job):
                await asyncio.to_thread(self.store.delete_folder, folder)
        await self.jobs.delete([job.id for job in jobs])
        uploads = await self.jobs.expire_uploads(time.time())
        for upload in uploads:
            await asyncio.to_thread(self.store.delete_folder, folder_of(upload.storage_key))
        if jobs or uploads:
            log.info("expired %d job(s) and their files, and %d upload(s)", len(jobs), len(uploads))
        return len(jobs)
