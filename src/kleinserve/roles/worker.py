"""`kleinserve worker`: a GPU worker, the other half of `kleinserve serve --role api`.

A worker serves no HTTP. It loads its models (--model ID[=PATH], --demo), claims batches from the shared job
store (--database-url), runs them, stores their images (--store) and records each job's end, its steps
(with previews for streamed jobs) and its logs; API servers answer for the jobs from the store. Every
--worker-heartbeat-s it records itself (id, host, pid, each model's state, batch size and speed), which is
how API servers know what is served (worker_models.py). It also requeues jobs whose worker went silent, as
every process sharing the store does.

Stopping (SIGTERM, SIGINT, or `stop`): it claims nothing more, lets running batches finish for `grace_s`,
then stops them and gives their jobs back to the queue for another worker, and leaves the heartbeat table
with its models gone. A worker killed outright leaves its leases to expire: its jobs run again elsewhere.

    worker = Worker(settings)      # what Ray Serve's engine deployment wraps, too
    await worker.start()
    ...
    await worker.stop(grace_s=30)
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import time

from kleinserve.job import WorkerRecord
from kleinserve.jobs.contract import JobStore
from kleinserve.metrics import Metrics
from kleinserve.roles.assembly import WorkerParts, open_stores, worker_parts
from kleinserve.settings import Settings
from kleinserve.storage.store import Store

log = logging.getLogger("kleinserve")

SETTLE_MARGIN_S = 10.0  # after the grace: time to record the stopped batches' ends and give them back


class Worker:
    def __init__(self, settings: Settings, *, jobs: JobStore | None = None, store: Store | None = None):
        """`jobs` and `store` default to the ones the settings name (--database-url, --store)."""
        self.settings = settings
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.started_at = time.time()
        self.parts: WorkerParts | None = None  # its models and loops, once started
        self._jobs, self._store = jobs, store
        self._owns_jobs = jobs is None
        self._heartbeat: asyncio.Task | None = None
        self._stopping = False
        self._metrics_server = None  # --worker-metrics-port: Prometheus' own small HTTP server

    async def start(self) -> None:
        """Open the stores, start loading the models (in the background) and heartbeating."""
        settings = self.settings
        self._jobs, self._store = await asyncio.to_thread(open_stores, settings, self._jobs, self._store)
        metrics = Metrics()
        self.parts = worker_parts(settings, self._jobs, self._store, metrics, self.id)
        await self.parts.models.start()
        for name, loop in self.parts.loops.items():
            self.parts.background.loop(loop(), name=name)
        if settings.worker_metrics_port is not None:
            from prometheus_client import start_http_server

            self._metrics_server, _ = start_http_server(
                settings.worker_metrics_port, addr=settings.host, registry=metrics.registry
            )
        await self._beat()
        self._heartbeat = asyncio.create_task(self._keep_beating(), name="heartbeat")
        log.info("worker %s (pid %d) started: %s", self.id, os.getpid(), ", ".join(self.models()))

    def models(self) -> dict[str, dict]:
        """Each served model's state, as the heartbeat reports it."""
        reports = {}
        for served in self.parts.models.models:
            batcher = served.batcher
            reports[served.spec.id] = {
                "state": served.state,
                "demo": served.demo,
                "max_batch_images": self.settings.max_batch_images,
                "seconds_per_batch": batcher.seconds_per_batch if batcher else None,
                **({"error": served.error} if served.error else {}),
            }
        return reports

    @property
    def ready(self) -> bool:
        return self.parts is not None and not self._stopping and self.parts.models.ready

    async def queued_jobs(self) -> int:
        """Jobs queued for its models (Ray Serve's engine autoscaling counts them)."""
        return sum([await self._jobs.queue_depth(served.spec.id) for served in self.parts.models.models])

    def running_jobs(self) -> int:
        """Jobs in its running batches."""
        return sum(batcher.running_jobs for batcher in self.parts.models.batchers)

    async def stop(self, grace_s: float = 0) -> None:
        if self.parts is None:
            return
        models, background = self.parts.models, self.parts.background
        if not self._stopping:
            self._stopping = True
            log.warning("shutting down: running batches get %g s", grace_s)  # their jobs then run elsewhere
            models.begin_shutdown(grace_s)
        await background.drained(grace_s + SETTLE_MARGIN_S, first=models.stopped())
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        try:
            await self._beat(models={})  # API servers stop listing this worker's models at once
        except Exception as exc:
            log.warning("could not record the worker's end: %s", exc)
        await background.stop()
        models.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        if self._owns_jobs:
            await self._jobs.close()
        self.parts = None

    async def _keep_beating(self) -> None:
        while True:
            await asyncio.sleep(self.settings.worker_heartbeat_s)
            try:
                await self._beat()
            except Exception as exc:  # the database is briefly away: API servers keep it live for the TTL
                log.warning("heartbeat failed: %s", exc)

    async def _beat(self, models: dict | None = None) -> None:
        record = WorkerRecord(
            self.id, socket.gethostname(), os.getpid(), self.models() if models is None else models,
            self.started_at, time.time(),
        )  # fmt: skip
        await self._jobs.heartbeat(record)


def run(settings: Settings) -> None:
    """The `kleinserve worker` command: a worker until SIGTERM or SIGINT."""
    asyncio.run(_run(settings))


async def _run(settings: Settings) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    worker = Worker(settings)
    await worker.start()
    try:
        await stopping.wait()
        log.warning("stopping: running batches get %g s", settings.shutdown_grace_s)
    finally:
        await worker.stop(settings.shutdown_grace_s)
