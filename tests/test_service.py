"""The image service in-process: a failure after the engine (here: storage) fails the job, recorded."""

import asyncio

import pytest

from kleinserve.jobs import JobStatus, SQLiteJobStore
from kleinserve.metrics import Metrics
from kleinserve.models import Variant
from kleinserve.outputs import OutputOptions
from kleinserve.request import build_request
from kleinserve.service import GenerationFailed, ImageService
from kleinserve.settings import Settings
from kleinserve.storage import LocalStore


class FullDisk(LocalStore):
    def put(self, key: str, data: bytes) -> None:
        raise OSError(28, "No space left on device")


def test_a_storage_failure_fails_the_job_with_its_reason(checkpoints, tmp_path):
    settings = Settings(
        models=(f"flux.2-klein-4b={checkpoints[Variant.DISTILLED]}",), data_dir=tmp_path, warmup=False
    )

    async def scenario():
        service = ImageService(
            settings, SQLiteJobStore(settings.database_path), FullDisk(tmp_path), Metrics()
        )
        await service.start()
        try:
            while not service.ready:
                await asyncio.sleep(0.05)
            served = service.model("FLUX-2-klein-4b")
            request = build_request(served.spec, prompt="x", width=64, height=64, seed=1)
            with pytest.raises(GenerationFailed, match="No space left on device"):
                await service.generate(served, request, OutputOptions(), {})
            stored_nothing = await service.generate(served, request, OutputOptions(store=False), {})
            jobs = [await service.job(job_id) for job_id in _all_job_ids(settings.database_path)]
            return stored_nothing, jobs
        finally:
            await service.stop()
            await service.jobs.close()

    inline, jobs = asyncio.run(scenario())
    assert inline.images[0].key is None and inline.images[0].data.startswith(b"\x89PNG")
    failed = next(job for job in jobs if job.status is JobStatus.FAILED)
    assert "No space left on device" in failed.error["message"]
    assert failed.logs[-1]["message"].startswith("failed: generation failed")
    assert sum(job.status is JobStatus.SUCCEEDED for job in jobs) == 1


def _all_job_ids(database) -> list[str]:
    import sqlite3

    with sqlite3.connect(database) as db:
        return [row[0] for row in db.execute("SELECT id FROM jobs")]
