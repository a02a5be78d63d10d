"""The image service in-process: failures (storage, engine, the batch loop itself) end jobs truthfully."""

import asyncio
import threading

import pytest

from kleinserve.errors import GenerationFailed, StorageFull
from kleinserve.job import JobStatus
from kleinserve.jobs.sqlite.store import SQLiteJobStore
from kleinserve.metrics import Metrics
from kleinserve.models import Variant
from kleinserve.request import OutputOptions, build_request
from kleinserve.roles.assembly import embedded_service
from kleinserve.service.facade import ImageService
from kleinserve.service.local_models import BATCHER_RESTARTS
from kleinserve.settings import Settings
from kleinserve.storage.store import LocalStore


class FullDisk(LocalStore):
    def put(self, key: str, data: bytes) -> None:
        raise OSError(28, "No space left on device")


def test_a_storage_failure_fails_the_job_with_its_reason(checkpoints, tmp_path):
    settings = Settings(
        models=(f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}",), data_dir=tmp_path, warmup=False
    )

    async def scenario():
        service = embedded_service(
            settings, SQLiteJobStore(settings.database_path), FullDisk(tmp_path), Metrics()
        )
        await service.start()
        try:
            while not service.ready:
                await asyncio.sleep(0.05)
            served = service.model("FLUX-2-klein-4b")
            request = build_request(served.spec, prompt="x", width=64, height=64, seed=1)
            with pytest.raises(StorageFull, match="disk is full"):
                await service.generate(served, request, OutputOptions(), {})
            stored_nothing = await service.generate(served, request, OutputOptions(store=False), {})
            jobs = await service.recent_jobs(None, None, 100)
            jobs = [await service.job(job.id) for job in jobs]  # with their logs
            return stored_nothing, jobs
        finally:
            await service.stop()
            await service.jobs.close()

    inline, jobs = asyncio.run(scenario())
    assert inline.images[0].key is None and inline.images[0].data.startswith(b"\x89PNG")
    failed = next(job for job in jobs if job.status is JobStatus.FAILED)
    assert "disk is full" in failed.error["message"] and failed.error["type"] == "storage_full"
    assert failed.logs[-1]["message"].startswith("failed: the server's disk is full")
    assert not list(tmp_path.glob("**/.partial-*"))
    assert sum(job.status is JobStatus.SUCCEEDED for job in jobs) == 1


async def _started(settings, tmp_path) -> ImageService:
    service = embedded_service(
        settings, SQLiteJobStore(settings.database_path), LocalStore(tmp_path), Metrics()
    )
    await service.start()
    while not service.ready:
        await asyncio.sleep(0.05)
    return service


async def _stopped(service: ImageService) -> None:
    await service.stop()
    await service.jobs.close()


def test_an_engine_failure_tells_the_client_no_internals(checkpoints, tmp_path):
    settings = Settings(models=(f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}",), data_dir=tmp_path)

    async def scenario():
        service = await _started(settings, tmp_path)
        served = service.model(None)

        def broken(requests, **kwargs):
            raise RuntimeError("CUDA error at /opt/secret/kernels.cu:42")

        served.batcher.engine.generate = broken
        try:
            request = build_request(served.spec, prompt="x", width=64, height=64, seed=1)
            with pytest.raises(GenerationFailed) as caught:
                await service.generate(served, request, OutputOptions(), {})
            return str(caught.value)
        finally:
            await _stopped(service)

    message = asyncio.run(scenario())
    assert "RuntimeError" in message and "secret" not in message and "server log" in message


def test_a_dying_batcher_is_restarted_then_its_model_is_marked_failed(checkpoints, tmp_path):
    settings = Settings(models=(f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}",), data_dir=tmp_path)

    async def scenario():
        service = await _started(settings, tmp_path)
        served = service.model(None)
        crashes = []

        async def crashing_run_batch(batch):
            crashes.append(len(batch))
            raise RuntimeError("a bug in the batch loop")

        served.batcher._run_batch = crashing_run_batch
        request = build_request(served.spec, prompt="x", width=64, height=64, seed=1)
        try:
            outcomes = []
            for _ in range(BATCHER_RESTARTS + 1):
                with pytest.raises(GenerationFailed, match="BatcherFailed") as caught:
                    await service.generate(served, request, OutputOptions(), {})
                outcomes.append(str(caught.value))
            await asyncio.sleep(0.1)
            return crashes, served.state, service.ready
        finally:
            await _stopped(service)

    crashes, state, ready = asyncio.run(scenario())
    assert crashes == [1] * (BATCHER_RESTARTS + 1)  # each crash failed its job; the loop came back
    assert state == "failed" and not ready


def test_a_jobs_safety_check_does_not_wait_for_the_next_batch(checkpoints, tmp_path):
    settings = Settings(
        models=(f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}",), data_dir=tmp_path, batch_wait_ms=0
    )  # the safety checker is on (the tiny classifier, from conftest)

    async def scenario():
        service = await _started(settings, tmp_path)
        served = service.model(None)
        checked = OutputOptions(safety_check=True)
        engine, b_generated = served.batcher.engine, threading.Event()
        generate = engine.generate

        def recording(requests, **kwargs):
            results = generate(requests, **kwargs)
            if requests[0].prompt == "b":
                b_generated.set()
            return results

        engine.generate = recording
        try:
            small = build_request(served.spec, prompt="a", width=64, height=64, seed=1)
            large = build_request(served.spec, prompt="b", width=1024, height=1024, steps=8, seed=2)
            job_a = await service.submit(served, small, checked, {})
            job_b = await service.submit(served, large, OutputOptions(), {})  # queued behind A, runs next
            outcome_b = asyncio.ensure_future(service.outcome(job_b))
            await service.outcome(job_a)  # generated, safety-checked, encoded, stored
            b_done_when_a_finished = b_generated.is_set()
            await outcome_b
            return b_done_when_a_finished, b_generated.is_set()
        finally:
            await _stopped(service)

    b_done_when_a_finished, b_done = asyncio.run(scenario())
    assert b_done and not b_done_when_a_finished  # A's check did not wait for B's whole generation
