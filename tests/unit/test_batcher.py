"""The batcher's rules: a real job store (SQLite) as its queue, and a stand-in engine that records what it
was asked to run."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pytest

from kleinserve.engine.engine import StepProgress
from kleinserve.errors import GenerationStopped, JobCancelled
from kleinserve.job import Job, JobStatus
from kleinserve.jobs.batcher import Batcher
from kleinserve.jobs.inputs import pack_inputs
from kleinserve.jobs.sqlite.store import SQLiteJobStore
from kleinserve.request import GenerationRequest, GenerationResult, OutputOptions


class RecordingEngine:
    """Same interface as Engine for the batcher: batch_key() and generate(); sleeps instead of computing."""

    class spec:
        id = "recording"

    def __init__(self, seconds: float = 0.05):
        self.seconds = seconds
        self.batches: list[list[str]] = []
        self.steps_run = 0
        self.previews_rendered = 0
        self.threads: set[str] = set()

    def render(self, images: int) -> list[np.ndarray]:
        self.previews_rendered += 1
        return [np.full((2, 2, 3), i, np.uint8) for i in range(images)]  # image i's preview is all i

    def batch_key(self, request: GenerationRequest) -> str:
        return f"{request.width}x{request.height}/{request.steps}"

    def generate(self, requests, on_step=None, should_stop=None):
        self.threads.add(threading.current_thread().name)
        self.batches.append([r.prompt for r in requests])
        for step in range(1, 5):
            time.sleep(self.seconds / 4)
            self.steps_run += 1
            if on_step is not None:
                images = sum(r.num_images for r in requests)
                on_step(StepProgress(tuple(range(len(requests))), step, 4, partial(self.render, images)))
            if should_stop is not None and should_stop():
                raise GenerationStopped(f"stopped after step {step}")
        if any(r.prompt == "boom" for r in requests):
            raise RuntimeError("out of memory")
        return [
            GenerationResult([r.prompt], r.seed, r.width, r.height, {"denoise": self.seconds})
            for r in requests
        ]


class Harness:
    """What the service does around a batcher: records jobs in the store, wakes the batcher, and turns the
    batcher's events into one future per job."""

    def __init__(self, store, listener=None):
        self.store = store
        self.batcher = None
        self.futures: dict[str, asyncio.Future] = {}
        self.previews_for: set[str] = set()
        self.started, self.finished, self.previews = [], [], []
        self.ending: set[asyncio.Future] = set()

    async def submit(self, job_id: str, request: GenerationRequest, *, previews=False) -> asyncio.Future:
        job = Job(job_id, "recording", {}, batch_key=self.batcher.engine.batch_key(request),
                  num_images=request.num_images, detached=True)  # fmt: skip
        assert await self.store.add(job, pack_inputs(request, OutputOptions()))
        if previews:
            self.previews_for.add(job_id)
        self.futures[job_id] = asyncio.get_running_loop().create_future()
        self.batcher.wake()
        return self.futures[job_id]

    async def cancel(self, job_id: str) -> str | None:
        outcome = await self.store.cancel(
            job_id, {"type": "cancelled", "message": "cancelled", "param": None}
        )
        if outcome == "cancelled":
            self.batcher.stop_job(job_id)
            self.futures[job_id].set_exception(JobCancelled("cancelled"))
        return outcome

    # the BatchListener protocol
    def wants_previews(self, job_id):
        return job_id in self.previews_for

    def batch_started(self, works):
        self.started.append([w.job_id for w in works])

    def batch_step(self, works, step, total, previews):
        self.previews.append({job: [int(p[0, 0, 0]) for p in pictures] for job, pictures in previews.items()})

    def batch_finished(self, works, timings):
        self.finished.append([w.job_id for w in works])

    def job_done(self, work, result):
        self.ending.add(asyncio.ensure_future(self._end(work, JobStatus.SUCCEEDED, result)))

    def job_failed(self, work, error):
        self.ending.add(asyncio.ensure_future(self._end(work, JobStatus.FAILED, error)))

    async def _end(self, work, status, outcome):
        await self.store.finish(work.job_id, status, result={}, lease=work.lease)
        future = self.futures[work.job_id]
        if status is JobStatus.SUCCEEDED:
            future.set_result(outcome)
        else:
            future.set_exception(outcome)


def request(prompt: str, size: int = 64, n: int = 1) -> GenerationRequest:
    return GenerationRequest(prompt, size, size, 4, 1.0, 0, num_images=n)


async def run_batcher(engine, calls, tmp_path, **options):
    """Start a batcher on a fresh store, let `calls(harness)` submit work, and return what it yields."""
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    harness = options.pop("harness", None) or Harness(store)
    harness.store = store
    settings = {"max_batch_images": 4, "max_wait_s": 0.05, "lease_s": 30.0, **options}
    with ThreadPoolExecutor(1, thread_name_prefix="gpu") as gpu:
        harness.batcher = Batcher(engine, gpu, store, harness, **settings)
        task = asyncio.create_task(harness.batcher.run())
        try:
            return await calls(harness)
        finally:
            task.cancel()
            await store.close()


def test_compatible_requests_share_a_batch_up_to_the_image_limit(tmp_path):
    engine = RecordingEngine()

    async def calls(h):
        futures = [await h.submit(f"j{i}", request(f"p{i}", n=2 if i == 0 else 1)) for i in range(4)]
        futures.append(await h.submit("other", request("other-size", size=128)))
        return await asyncio.gather(*futures)

    results = asyncio.run(run_batcher(engine, calls, tmp_path))
    assert [r.images[0] for r in results] == ["p0", "p1", "p2", "p3", "other-size"]
    assert engine.batches == [["p0", "p1", "p2"], ["p3"], ["other-size"]]  # 4 images fill a batch
    assert engine.threads == {"gpu_0"}  # never on the event loop's thread


def test_a_lone_request_waits_for_company_at_most_max_wait(tmp_path):
    engine = RecordingEngine(seconds=0)

    async def calls(h):
        lone = await h.submit("a", request("alone"))
        await asyncio.sleep(0.1)  # inside the wait: company still joins the batch
        company = await h.submit("b", request("company"))
        return await asyncio.gather(lone, company)

    asyncio.run(run_batcher(engine, calls, tmp_path, max_wait_s=1.0))
    assert engine.batches == [["alone", "company"]]


def test_work_arriving_while_the_engine_is_busy_is_batched_next(tmp_path):
    engine = RecordingEngine(seconds=0.3)

    async def calls(h):
        first = await h.submit("a", request("a"))
        await asyncio.sleep(0.1)  # "a" is running now
        later = [await h.submit(f"b{i}", request(f"b{i}")) for i in range(3)]
        return await asyncio.gather(first, *later)

    asyncio.run(run_batcher(engine, calls, tmp_path, max_wait_s=0))
    assert engine.batches == [["a"], ["b0", "b1", "b2"]]


async def one_running_one_queued(h):
    """Job "a" on the (slow) engine, job "b" waiting behind it."""
    running = await h.submit("a", request("a"))
    while not h.started:
        await asyncio.sleep(0.01)
    return running, await h.submit("b", request("b"))


def test_cancelled_work_never_runs(tmp_path):
    engine = RecordingEngine(seconds=0.2)

    async def calls(h):
        running, doomed = await one_running_one_queued(h)
        assert await h.store.queue_position("b") == 0
        assert await h.cancel("b") == "cancelled" and await h.cancel("b") == "finished"
        await running
        await asyncio.sleep(0.1)
        return doomed

    doomed = asyncio.run(run_batcher(engine, calls, tmp_path, max_wait_s=0))
    assert isinstance(doomed.exception(), JobCancelled) and engine.batches == [["a"]]


def test_a_cancelled_running_batch_stops_at_the_next_step(tmp_path):
    engine = RecordingEngine(seconds=0.8)  # 4 steps of 0.2 s

    async def calls(h):
        running = await h.submit("a", request("a"))
        while not h.started:
            await asyncio.sleep(0.01)
        assert await h.store.queue_position("a") is None and await h.cancel("a") == "cancelled"
        with pytest.raises(JobCancelled):
            await running
        return await (await h.submit("b", request("b")))

    assert asyncio.run(run_batcher(engine, calls, tmp_path, max_wait_s=0)).images == ["b"]
    assert engine.batches == [["a"], ["b"]]
    assert engine.steps_run == 1 + 4  # "a" stopped after the step it was in


def test_a_job_cancelled_in_the_store_by_another_process_stops_at_its_next_renewal(tmp_path, caplog):
    engine = RecordingEngine(seconds=0.8)

    async def calls(h):
        running = await h.submit("a", request("a"))
        while not h.started:
            await asyncio.sleep(0.01)
        await h.store.cancel("a", {"type": "cancelled", "message": "elsewhere", "param": None})  # no stop_job
        while h.batcher.running_leases():
            await asyncio.sleep(0.01)
        return running

    with caplog.at_level("WARNING", logger="kleinserve"):
        running = asyncio.run(run_batcher(engine, calls, tmp_path, max_wait_s=0))
    assert not running.done()  # never completed: the store already holds its end
    assert engine.steps_run <= 2  # the step it was in, and at most the one the renewal raced with
    # Said once, whichever of the renewals (or, in a worker, a progress write) saw it first.
    assert caplog.text.count("job a is no longer leased here (requeued or cancelled): it stops") == 1


def test_cancelling_one_job_of_a_batch_leaves_the_others_running(tmp_path):
    engine = RecordingEngine(seconds=0.4)

    async def calls(h):
        kept, dropped = await h.submit("a", request("a")), await h.submit("b", request("b"))
        while not h.started:
            await asyncio.sleep(0.01)
        assert await h.cancel("b") == "cancelled"
        with pytest.raises(JobCancelled):
            await dropped
        return await kept

    assert asyncio.run(run_batcher(engine, calls, tmp_path)).images == ["a"]
    assert engine.steps_run == 4


def test_an_engine_failure_fails_its_batch_only(tmp_path):
    engine = RecordingEngine(seconds=0)

    async def calls(h):
        bad = await h.submit("x", request("boom"))
        with pytest.raises(RuntimeError, match="out of memory"):
            await bad
        return await (await h.submit("y", request("fine")))

    assert asyncio.run(run_batcher(engine, calls, tmp_path)).images == ["fine"]


def test_step_previews_reach_only_the_jobs_that_asked_for_them(tmp_path):
    engine, harness = RecordingEngine(seconds=0), Harness(None)

    async def calls(h):
        futures = [
            await h.submit("a", request("a", n=2), previews=True),  # images 0, 1
            await h.submit("b", request("b")),  # image 2
            await h.submit("c", request("c"), previews=True),  # image 3
        ]
        await asyncio.gather(*futures)
        await (await h.submit("d", request("d")))  # nobody asks: none rendered
        await asyncio.sleep(0.05)

    asyncio.run(run_batcher(engine, calls, tmp_path, harness=harness, max_wait_s=0.2))
    assert engine.batches == [["a", "b", "c"], ["d"]]
    assert harness.previews == [{"a": [0, 1], "c": [3]}] * 4 + [{}] * 4
    assert engine.previews_rendered == 4  # rendered only for the batch with jobs that asked


def test_a_request_that_fails_its_batch_fails_alone_and_its_batch_mates_succeed(tmp_path):
    engine = RecordingEngine(seconds=0)

    async def calls(h):
        futures = [await h.submit(name, request(name)) for name in ("a", "boom", "c")]
        return await asyncio.gather(*futures, return_exceptions=True)

    a, boom, c = asyncio.run(run_batcher(engine, calls, tmp_path, max_wait_s=0.2))
    assert a.images == ["a"] and c.images == ["c"]
    assert isinstance(boom, RuntimeError) and "out of memory" in str(boom)
    assert engine.batches == [["a", "boom", "c"], ["a"], ["boom"], ["c"]]
