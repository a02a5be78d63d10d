"""What a model's batcher reports (jobs/batcher.py's BatchListener) -> job logs, step listeners, completions
and metrics, for models that run in this process.

Where jobs are submitted elsewhere (a worker's, whose API servers follow each job in the store: watch.py),
a `ProgressRecorder` is given: each step is recorded in the store, with previews for jobs whose submitter
streams them, and a detached job's end is measured here, as nobody here submitted it.
"""

from __future__ import annotations

import logging
import os

from kleinserve.jobs.batcher import Work
from kleinserve.request import GenerationResult
from kleinserve.service.completion import JobCompletion
from kleinserve.service.watch import ProgressRecorder

log = logging.getLogger("kleinserve")


class BatchEvents:
    def __init__(
        self,
        completion: JobCompletion,
        model: str,
        *,
        progress: ProgressRecorder | None = None,
        worker_id: str | None = None,
    ):
        """`worker_id`: named in each job's "started" log line."""
        self.completion = completion
        self.waiters = completion.waiters
        self.model = model
        self.progress = progress
        self.where = f" by worker {worker_id} (pid {os.getpid()})" if worker_id else ""
        self._previews: set[str] = set()  # the running jobs whose submitter elsewhere streams their steps

    def wants_previews(self, job_id: str) -> bool:
        return job_id in self._previews or self.waiters.wants_previews(job_id)

    def batch_started(self, works: list[Work]) -> None:
        images = sum(w.request.num_images for w in works)
        if self.progress is not None:
            self._previews = {w.job_id for w in works if w.job.params.get("previews")}
        for work in works:
            attempt = f" (attempt {work.job.attempts})" if work.job.attempts > 1 else ""
            message = f"started in a batch of {images} image(s){attempt}{self.where}"
            self._spawn(self._log(work.job_id, message))

    def batch_step(self, works: list[Work], step: int, total: int, previews: dict[str, list]) -> None:
        for work in works:
            if not work.stopped:  # its "step i/N" line is written with the batcher's lease renewal
                self.waiters.step(work.job_id, step, total, previews.get(work.job_id, []))
                if self.progress is not None:
                    self._spawn(self._record_step(work, step, total, previews.get(work.job_id, [])))

    async def _record_step(self, work: Work, step: int, total: int, previews: list) -> None:
        if not await self.progress.record(work.job_id, work.lease, step, total, previews):
            work.lease_lost()  # seen before the next lease renewal

    def batch_finished(self, works: list[Work], timings: dict[str, float]) -> None:
        images = sum(w.request.num_images for w in works)
        self.completion.metrics.observe_batch(self.model, images, timings)

    def job_done(self, work: Work, result: GenerationResult) -> None:
        self._measure(work)
        self._spawn(self.completion.complete(work, result))

    def job_failed(self, work: Work, error: Exception) -> None:
        self._measure(work)
        self._spawn(self.completion.failed(work, error))

    def _measure(self, work: Work) -> None:
        if self.progress is not None:
            self.waiters.measure(work.job)

    def _spawn(self, coroutine) -> None:
        self.completion.background.spawn(coroutine)

    async def _log(self, job_id: str, message: str) -> None:
        try:
            await self.completion.jobs.log(job_id, message)
        except Exception as exc:  # e.g. a full disk: the log line is lost, the job goes on
            log.warning("could not record a job update: %s", exc)
