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
from kleinserve.service.facade import ImageService
from kleinserve.settings import Settings
from kleinserve.storage.opening import open_store
from kleinserve.storage.store import Store

log = logging.getLogger("kleinserve")

SETTLE_MARGIN_S = 10.0  # after the grace: time to record the stopped batches' ends and give them back


class Worker:
    def __init__(self, settings: Settings, *, jobs: JobStore | None = None, store: Store | None = None):
        """`jobs` and `store` default to the ones the settings name (--database-url, --store)."""
        self.settings = settings
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.started_at = time.time()
        self.service: ImageService | None = None
        self._jobs, self._store = jobs, store
        self._owns_jobs = jobs is None
        self._heartbeat: asyncio.Task | None = None
        self._metrics_server = None  # --worker-metrics-port: Prometheus' own small HTTP server

    async def start(self) -> None:
        """Open the stores, start loading the models (in the background) and heartbeating."""
        from kleinserve.jobs.opening import open_job_store

        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if self._jobs is None:
            self._jobs = await asyncio.to_thread(open_job_store, settings)
        if self._store is None:
            where = (settings.store, settings.files_dir, settings.presign_expiry_s, settings.store_public_url)
            self._store = await asyncio.to_thread(open_store, *where)
        metrics = Metrics()
        self.service = ImageService(
            settings, self._jobs, self._store, metrics, role="worker", worker_id=self.id
        )
        await self.service.start()
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
        for served in self.service.models:
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
        return self.service is not None and self.service.ready

    async def stop(self, grace_s: float = 0) -> None:
        if self.service is None:
            return
        self.service.begin_shutdown(grace_s)
        await self.service.settled(grace_s + SETTLE_MARGIN_S)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        try:
            await self._beat(models={})  # API servers stop listing this worker's models at once
        except Exception as exc:
            log.warning("could not record the worker's end: %s", exc)
        await self.service.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        if self._owns_jobs:
            await self._jobs.close()
        self.service = None

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
