"""The models that run in this process (`serve`, and `kleinserve worker`): each served model's engine is
loaded and warmed up on a thread of its own, then fed by a batcher (jobs/batcher.py) that claims its jobs
from the store; a supervisor restarts a batcher that dies, up to BATCHER_RESTARTS times.

Every job submitted here ends here, so each gets a waiter (a detached job's measures its end). Stopping:
the batchers claim nothing more; after the grace the running batches stop, their leases go back to the
store, and their jobs run again later, except those a caller here waits for: they fail, and say why.
"""

from __future__ import annotations

import asyncio
import logging
import math
from concurrent.futures import ThreadPoolExecutor

from kleinserve.errors import BatcherFailed, ModelNotServed
from kleinserve.job import Job, JobStatus
from kleinserve.jobs.batcher import Batcher
from kleinserve.jobs.contract import JobStore
from kleinserve.service.background import Background
from kleinserve.service.batch_events import BatchEvents
from kleinserve.service.completion import JobCompletion
from kleinserve.service.lora_sources import LoraSources, lora_sources
from kleinserve.service.outcome import SHUTTING_DOWN, JobError, Outcome
from kleinserve.service.safety import SafetyScreen
from kleinserve.service.served_models import DEMO_LABEL, ServedModel, served_specs
from kleinserve.service.waiters import StepListener, Waiter
from kleinserve.service.watch import ProgressRecorder
from kleinserve.settings import Settings
from kleinserve.simulated_engine import SimulatedEngine, simulated_engine_ms

log = logging.getLogger("kleinserve")

BATCHER_RESTARTS = 3
STOPPED = "the server is shutting down: this job was stopped before it finished"


class LocalModels:
    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        completion: JobCompletion,
        screen: SafetyScreen,
        *,
        progress: ProgressRecorder | None = None,
        worker_id: str | None = None,
    ):
        """`progress` and `worker_id`: for jobs submitted elsewhere (a worker's; batch_events.py)."""
        self.settings = settings
        self.jobs = jobs
        self.completion = completion
        self.waiters = completion.waiters
        self.background: Background = completion.background
        self.screen = screen
        self._progress, self._worker_id = progress, worker_id
        self.models = [ServedModel(*each) for each in served_specs(settings)]
        self._by_name = {name.lower(): served for served in self.models for name in served.names}
        # Each model's engine has a thread of its own (loading one model never stalls another's batches).
        self._engine_threads = {
            served.spec.id: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kleinserve-engine-{i}")
            for i, served in enumerate(self.models)
        }
        self._supervisors: list[asyncio.Task] = []
        self.loras: LoraSources = lora_sources(settings)  # a job's LoRAs, fetched and cached here

    @property
    def ready(self) -> bool:
        return all(served.state == "ready" for served in self.models)

    def model(self, name: str | None) -> ServedModel:
        if name is None:
            return self.models[0]
        served = self._by_name.get(name.strip().lower())
        if served is None:
            served_ids = ", ".join(m.spec.id for m in self.models)
            raise ModelNotServed(f"model '{name}' is not served here; this server serves: {served_ids}")
        return served

    def waiter(self, job: Job, on_step: StepListener | None) -> Waiter:
        return self.waiters.add(job, on_step)

    def queued(self, job: Job) -> None:
        self._by_name[job.model.lower()].batcher.wake()

    def retry_after(self, served: ServedModel, depth: int) -> int:
        batcher = served.batcher
        batches_ahead = math.ceil((depth + 1) / batcher.max_batch_images)
        return max(1, math.ceil(batches_ahead * batcher.seconds_per_batch))

    def stop_job(self, model: str, job_id: str) -> None:
        if (served := self._by_name.get(model.lower())) and served.batcher:
            served.batcher.stop_job(job_id)

    def wake(self) -> None:
        for served in self.models:
            if served.batcher is not None:
                served.batcher.wake()

    @property
    def batchers(self) -> list[Batcher]:
        return [served.batcher for served in self.models if served.batcher is not None]

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """The safety checker loads now (a failure stops the start-up); the models load in the background."""
        if self.settings.safety_checker:
            await self.screen.load(self.settings)
        self.background.loop(self._load_models(), name="load-models")

    async def _load_models(self) -> None:
        loop = asyncio.get_running_loop()
        load_engine = _engine_loader()
        for served in self.models:
            thread = self._engine_threads[served.spec.id]
            try:
                engine = await loop.run_in_executor(
                    thread, load_engine, served.spec, self.settings, served.demo
                )
            except Exception as exc:
                served.state, served.error = "failed", f"it failed to load ({type(exc).__name__}: {exc})"
                log.error("could not load %s: %s", served.spec.id, served.error)
                continue
            _use_lora_sources(engine, self.loras, loop, self.settings.lora_cache_mb)
            events = BatchEvents(
                self.completion, served.spec.id, progress=self._progress, worker_id=self._worker_id
            )
            served.batcher = Batcher(
                engine,
                thread,
                self.jobs,
                events,
                max_batch_images=self.settings.max_batch_images,
                max_wait_s=self.settings.batch_wait_ms / 1000,
                lease_s=self.settings.job_lease_s,
            )
            supervisor = self.background.loop(self._supervise(served), name=f"batcher-{served.spec.id}")
            self._supervisors.append(supervisor)
            served.state = "ready"
            log.info("%s is ready%s", served.spec.id, f" ({DEMO_LABEL})" if served.demo else "")

    async def _supervise(self, served: ServedModel) -> None:
        """Runs the model's batcher loop; if it dies (a bug), the batch it held fails with the reason and it
        is restarted, up to BATCHER_RESTARTS times; after that the model is failed and /ready says so."""
        for attempt in range(BATCHER_RESTARTS + 1):
            try:
                await served.batcher.run()
                return  # drained: the server is stopping
            except Exception as exc:
                log.exception("the batcher of %s died (attempt %d)", served.spec.id, attempt + 1)
                message = f"the model's batcher failed ({type(exc).__name__})"
                for work in served.batcher.stop_running():
                    await self.completion.failed(work, BatcherFailed(message))
                served.error = f"its batcher failed ({type(exc).__name__}: {exc})"
        served.state = "failed"
        log.error("%s is out of service: its batcher failed %d times", served.spec.id, BATCHER_RESTARTS + 1)

    def begin_shutdown(self, grace_s: float) -> None:
        for batcher in self.batchers:
            batcher.drain()
        stop = lambda: self.background.spawn(self._stop_running_batches())  # noqa: E731
        asyncio.get_running_loop().call_later(grace_s, stop)

    async def _stop_running_batches(self) -> None:
        error = JobError(SHUTTING_DOWN, STOPPED)
        for batcher in self.batchers:
            works = batcher.stop_running()
            for lease in {work.lease for work in works}:
                await self.jobs.release(lease)  # they run again at the next start, or in another worker
            for work in works:
                waiter = self.waiters.get(work.job_id)
                if waiter is None or waiter.detached:  # no caller here: it has not ended, it runs again
                    self.waiters.drop(work.job_id)
                else:
                    await self.completion.record_end(work, JobStatus.FAILED, error=error)
                    self.completion.settle(work.job_id, Outcome(error=error))

    async def stopped(self) -> None:
        await asyncio.gather(*self._supervisors, return_exceptions=True)

    def close(self) -> None:
        for thread in (*self._engine_threads.values(), self.screen.thread):
            thread.shutdown(wait=True, cancel_futures=True)


def _engine_loader():
    """The real engine's loader (torch is imported here, off the event loop), or the capacity benchmark's
    stand-in when KLEINSERVE_SIMULATED_ENGINE_MS is set (simulated_engine.py)."""
    ms = simulated_engine_ms()
    if ms is None:
        from kleinserve.service.engine_startup import load_engine

        return load_engine
    log.warning(
        "SIMULATED ENGINE (%g ms per image, grey images): for capacity benchmarks only, never serve", ms
    )
    return lambda spec, settings, demo: SimulatedEngine(spec, ms)


def _use_lora_sources(engine, sources: LoraSources, loop: asyncio.AbstractEventLoop, cache_mb: int) -> None:
    """The engine (on its thread) gets a job's LoRA files from `sources`, run on this process's event loop."""

    def resolve(source: str):
        return asyncio.run_coroutine_threadsafe(sources.resolve(source, "loras"), loop).result()

    engine.lora_source = resolve
    engine.lora_cache.max_bytes = cache_mb * 2**20
