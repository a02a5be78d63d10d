"""Faults in-process (tests/live/test_faults.py breaks the real parts): an unreachable job database is a 503
with Retry-After in every dialect's shape; a job's images are stored whole or not at all; a job's end is
retried through a database outage and written once."""

import asyncio
import errno
import time

import numpy as np
import pytest

from kleinserve.api.errors import from_service_error
from kleinserve.errors import DatabaseUnavailable
from kleinserve.job import Job, JobStatus, new_job_id
from kleinserve.jobs.batcher import Work
from kleinserve.jobs.sqlite.store import SQLiteJobStore
from kleinserve.metrics import Metrics
from kleinserve.pricing import Prices
from kleinserve.request import GenerationRequest, OutputOptions
from kleinserve.service import completion as completion_module
from kleinserve.service.background import Background
from kleinserve.service.completion import JobCompletion
from kleinserve.service.outputs import Outputs
from kleinserve.service.waiters import Waiters
from kleinserve.storage.store import LocalStore

MODEL = "flux.2-klein-4b"
REQUEST = GenerationRequest(prompt="a fox", width=64, height=64, steps=4, guidance=1.0, seed=3, num_images=2)


@pytest.mark.parametrize(
    ("path", "field"),
    [("/v1/images/generations", "error"), ("/queue/fal-ai/flux-2/klein/4b", "detail"),
     ("/v1/flux-2-klein-4b", "detail")],
)  # fmt: skip
def test_an_unreachable_database_is_a_503_with_retry_after_in_each_dialects_shape(path, field):
    response = from_service_error(DatabaseUnavailable("connection refused at 10.0.0.7")).response(path)
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    body = response.body.decode()
    assert field in body and "database is unreachable" in body and "10.0.0.7" not in body


class FillsUp(LocalStore):
    """A disk that fills up after `room` files."""

    def __init__(self, root, room: int):
        super().__init__(root)
        self.room = room

    def put(self, key: str, data: bytes) -> None:
        if self.room == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= 1
        super().put(key, data)


def test_a_store_that_fills_up_mid_job_keeps_none_of_its_images(tmp_path):
    store = FillsUp(tmp_path / "images", room=1)
    outputs = Outputs(store, jobs=None, inline_ttl_s=60)
    arrays = [np.zeros((64, 64, 3), np.uint8)] * 2

    async def run():
        return await outputs.encode_and_store(arrays, [False, False], REQUEST, OutputOptions(), {})

    with pytest.raises(OSError, match="No space"):
        asyncio.run(run())
    assert [path for path in (tmp_path / "images").rglob("*") if path.is_file()] == []


class AwayAWhile(SQLiteJobStore):
    """The database is unreachable for the first `outage` finishes."""

    outage_calls = 2

    async def finish(self, *args, **kwargs):
        if self.outage_calls:
            self.outage_calls -= 1
            raise DatabaseUnavailable("connection refused")
        return await super().finish(*args, **kwargs)


class AnswerLost(SQLiteJobStore):
    """The first finish commits, then its answer is lost with the connection (a database restart)."""

    lost_answers = 1

    async def finish(self, *args, **kwargs):
        ended = await super().finish(*args, **kwargs)
        if self.lost_answers:
            self.lost_answers -= 1
            raise DatabaseUnavailable("server closed the connection unexpectedly")
        return ended


@pytest.mark.parametrize("store_class", [AwayAWhile, AnswerLost])
def test_a_jobs_end_is_retried_through_a_database_outage_and_recorded_once(tmp_path, monkeypatch,
                                                                           store_class):
    monkeypatch.setattr(completion_module, "RECORD_RETRY_DELAYS", (0.01,) * 5)

    async def run():
        store = store_class(tmp_path / "jobs.db")
        job = Job(new_job_id(), MODEL, {"prompt": "a fox"}, batch_key="k", detached=True)
        await store.add(job, b"inputs")
        claim = await store.claim(MODEL, max_images=1, lease_s=30, ready_before=time.time() + 1)
        completion = JobCompletion(store, Outputs(LocalStore(tmp_path / "images"), store, 60), Metrics(),
                                   Prices(()), Waiters(None), Background())  # fmt: skip
        work = Work(claim.jobs[0], REQUEST, OutputOptions(), claim.lease)
        ended = await completion.record_end(work, JobStatus.SUCCEEDED, result={"images": []})
        record = await store.get(job.id)
        await store.close()
        return ended, record

    ended, record = asyncio.run(run())
    assert (ended, record.status) == (True, JobStatus.SUCCEEDED)  # True: the end is this worker's own
    assert [entry["message"] for entry in record.logs].count("succeeded") == 1
