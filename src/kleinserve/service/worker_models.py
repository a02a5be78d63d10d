"""The models that run in workers (`serve --role api`): those the workers report in their heartbeats.

Each `kleinserve worker` records itself in the job store every --worker-heartbeat-s (worker.py): its models,
each one's state (loading, ready, failed), batch size and seconds per batch. An API server reads the
workers seen within --worker-ttl-s every heartbeat interval. A model is ready when a live worker has it
ready, else loading when one is loading it, else failed. The default model (requests that name none) is the
first model of the longest-running live worker.

A request for a model no live worker serves is refused at once: 503 with Retry-After when a worker served it
within RECENT_S (it is probably restarting), else 404 naming the models live workers serve. Nothing is
queued for a model nobody may ever run.

A job a caller here waits for is followed in the job store until it ends (watch.py): its steps go to the
caller's step listener, its end settles the caller's waiter. A detached job is not followed: the worker that
runs it measures its end.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from kleinserve.errors import ModelNotReady, ModelNotServed, UnknownModel
from kleinserve.job import Job, WorkerRecord
from kleinserve.jobs.contract import JobStore
from kleinserve.models import resolve_model
from kleinserve.service.background import Background
from kleinserve.service.outcome import Outcome
from kleinserve.service.outputs import Outputs
from kleinserve.service.served_models import ServedModel
from kleinserve.service.waiters import StepListener, Waiter, Waiters
from kleinserve.service.watch import follow, outcome_of

log = logging.getLogger("kleinserve")

RECENT_S = 600.0
_RANK = {"ready": 0, "loading": 1, "failed": 2}


class WorkerModels:
    def __init__(
        self,
        jobs: JobStore,
        outputs: Outputs,
        waiters: Waiters,
        background: Background,
        settle: Callable[[str, Outcome], None],
        *,
        heartbeat_s: float,
        ttl_s: float,
    ):
        """`settle(job_id, outcome)`: a followed job ended (completion.py)."""
        self.jobs = jobs
        self.outputs = outputs
        self.waiters = waiters
        self.background = background
        self._settle = settle
        self.heartbeat_s = heartbeat_s
        self.ttl_s = ttl_s
        self.models: list[ServedModel] = []
        self.workers: list[WorkerRecord] = []
        self._by_name: dict[str, ServedModel] = {}
        self._reports: dict[str, list[dict]] = {}  # model id -> its live workers' reports
        self._recent: dict[str, float] = {}  # model id -> when a worker last reported it, live or not

    @property
    def ready(self) -> bool:
        """Once a worker serves something."""
        return any(served.state == "ready" for served in self.models)

    async def start(self) -> None:
        await self.refresh()
        self.background.loop(self.keep_fresh(), name="worker-models")

    async def refresh(self) -> None:
        now = time.time()
        records = await self.jobs.workers(now - max(RECENT_S, self.ttl_s))
        self.workers = [record for record in records if record.seen_at >= now - self.ttl_s]
        self._recent = {model: record.seen_at for record in records for model in record.models}
        reports: dict[str, list[dict]] = {}
        for record in self.workers:
            for model, report in record.models.items():
                reports.setdefault(model, []).append(report)
        self._reports = reports
        self.models = [_served(model, found) for model, found in reports.items()]
        self._by_name = {name.lower(): served for served in self.models for name in served.names}

    async def keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("reading the workers' heartbeats failed; retrying")

    def model(self, name: str | None) -> ServedModel:
        if name is None:
            if not self.models:
                raise ModelNotReady("no worker serves a model yet; start `kleinserve worker` processes")
            return self.models[0]
        served = self._by_name.get(name.strip().lower())
        if served is not None:
            return served
        try:
            model_id = resolve_model(name).id
        except UnknownModel:
            model_id = None
        if model_id in self._recent:
            ago = time.time() - self._recent[model_id]
            raise ModelNotReady(f"no live worker serves {model_id} right now (last seen {ago:.0f} s ago)")
        live = ", ".join(served.spec.id for served in self.models) or "none yet"
        raise ModelNotServed(f"model '{name}' is not served here; the live workers serve: {live}")

    def waiter(self, job: Job, on_step: StepListener | None) -> Waiter | None:
        return None if job.detached else self.waiters.add(job, on_step)

    def queued(self, job: Job) -> None:
        if job.id in self.waiters:
            self.background.spawn(self._follow(job.id))

    async def _follow(self, job_id: str) -> None:
        """A worker runs the job; its steps and end come from the job store (watch.py)."""
        waiter = self.waiters.get(job_id)
        job = await follow(self.jobs, job_id, waiter.on_step, lambda: job_id in self.waiters)
        if job_id in self.waiters:  # not settled here meanwhile (a cancel)
            self._settle(job_id, await outcome_of(job, self.outputs))

    def retry_after(self, served: ServedModel, depth: int) -> int:
        """Seconds until a full queue probably has room, from the workers' reported batch speed."""
        reports = [r for r in self._reports.get(served.spec.id, []) if r.get("state") == "ready"] or [{}]
        per_second = sum(r.get("max_batch_images", 1) / max(r.get("seconds_per_batch", 1.0), 0.01)
                         for r in reports)  # fmt: skip
        return max(1, math.ceil((depth + 1) / per_second))

    def stop_job(self, model: str, job_id: str) -> None:
        """Nothing runs here: the worker sees the cancel in the store at its next lease renewal."""

    def wake(self) -> None:
        """Nothing runs here: workers see requeued jobs in the store."""

    def begin_shutdown(self, grace_s: float) -> None:
        """Nothing runs here."""

    async def stopped(self) -> None:
        return None

    def close(self) -> None:
        return None


def _served(model: str, reports: list[dict]) -> ServedModel:
    best = min(reports, key=lambda report: _RANK.get(report.get("state"), 3))
    served = ServedModel(resolve_model(model), demo=bool(best.get("demo")), state=best.get("state", "failed"))
    served.error = best.get("error") if served.state == "failed" else None
    served.workers = sum(1 for report in reports if report.get("state") == "ready")
    return served
