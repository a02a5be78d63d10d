"""The batcher's rules, with a stand-in engine that records what it was asked to run."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pytest

from kleinserve.batcher import Batcher
from kleinserve.engine.engine import StepProgress
from kleinserve.errors import JobCancelled, QueueFull
from kleinserve.request import GenerationRequest, GenerationResult


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

    def batch_key(self, request: GenerationRequest) -> tuple:
        return request.width, request.height, request.steps

    def generate(self, requests, on_step=None):
        self.threads.add(threading.current_thread().name)
        self.batches.append([r.prompt for r in requests])
        for step in range(1, 5):
            time.sleep(self.seconds / 4)
            self.steps_run += 1
            if on_step is not None:
                images = sum(r.num_images for r in requests)
                on_step(StepProgress(tuple(range(len(requests))), step, 4, partial(self.render, images)))
        if any(r.prompt == "boom" for r in requests):
            raise RuntimeError("out of memory")
        return [
            GenerationResult([r.prompt], r.seed, r.width, r.height, {"denoise": self.seconds})
            for r in requests
        ]


class Listener:
    def __init__(self):
        self.started, self.finished, self.previews = [], [], []

    def batch_started(self, works):
        self.started.append([w.job_id for w in works])

    def batch_step(self, works, step, total, previews):
        self.previews.append({job: [int(p[0, 0, 0]) for p in pictures] for job, pictures in previews.items()})

    def batch_finished(self, works, timings):
        self.finished.append([w.job_id for w in works])


def request(prompt: str, size: int = 64, n: int = 1) -> GenerationRequest:
    return GenerationRequest(prompt, size, size, 4, 1.0, 0, num_images=n)


async def run_batcher(engine, calls, **options):
    """Start a batcher, let `calls(batcher)` submit work, and return what it yields."""
    listener = options.pop("listener", None) or Listener()
    settings = {"max_batch_images": 4, "max_wait_s": 0.05, "max_queue_depth": 16, **options}
    with ThreadPoolExecutor(1, thread_name_prefix="gpu") as gpu:
        batcher = Batcher(engine, gpu, listener, **settings)
        task = asyncio.create_task(batcher.run())
        try:
            return await calls(batcher)
        finally:
            task.cancel()


def test_compatible_requests_share_a_batch_up_to_the_image_limit():
    engine = RecordingEngine()

    async def calls(batcher):
        futures = [batcher.submit(f"j{i}", request(f"p{i}", n=2 if i == 0 else 1)) for i in range(4)]
        futures.append(batcher.submit("other", request("other-size", size=128)))
        return await asyncio.gather(*futures)

    results = asyncio.run(run_batcher(engine, calls))
    assert [r.images[0] for r in results] == ["p0", "p1", "p2", "p3", "other-size"]
    assert engine.batches == [["p0", "p1", "p2"], ["p3"], ["other-size"]]  # 4 images fill a batch
    assert engine.threads == {"gpu_0"}  # never on the event loop's thread


def test_a_lone_request_waits_at_most_max_wait():
    engine = RecordingEngine(seconds=0)

    async def calls(batcher):
        start = time.monotonic()
        await batcher.submit("j", request("alone"))
        return time.monotonic() - start

    elapsed = asyncio.run(run_batcher(engine, calls, max_wait_s=0.2))
    assert 0.19 <= elapsed < 1.0


def test_work_arriving_while_the_engine_is_busy_is_batched_next():
    engine = RecordingEngine(seconds=0.3)

    async def calls(batcher):
        first = batcher.submit("a", request("a"))
        await asyncio.sleep(0.1)  # "a" is running now
        later = [batcher.submit(f"b{i}", request(f"b{i}")) for i in range(3)]
        return await asyncio.gather(first, *later)

    asyncio.run(run_batcher(engine, calls, max_wait_s=0))
    assert engine.batches == [["a"], ["b0", "b1", "b2"]]


async def one_running_one_queued(batcher):
    """Job "a" on the (slow) engine, job "b" waiting behind it."""
    running = batcher.submit("a", request("a"))
    await asyncio.sleep(0.05)
    return running, batcher.submit("b", request("b"))


def test_queue_full_refuses_with_retry_after():
    engine = RecordingEngine(seconds=0.2)

    async def calls(batcher):
        running, queued = await one_running_one_queued(batcher)
        with pytest.raises(QueueFull) as caught:
            batcher.submit("c", request("c"))
        await asyncio.gather(running, queued)
        return caught.value

    refusal = asyncio.run(run_batcher(engine, calls, max_queue_depth=1, max_wait_s=0))
    assert refusal.retry_after >= 1 and "1 jobs queued" in str(refusal)


def test_cancelled_work_never_runs():
    engine = RecordingEngine(seconds=0.2)

    async def calls(batcher):
        running, doomed = await one_running_one_queued(batcher)
        assert batcher.position("b") == 0
        assert batcher.cancel("b") and not batcher.cancel("b")
        await running
        await asyncio.sleep(0.1)
        return doomed

    doomed = asyncio.run(run_batcher(engine, calls, max_wait_s=0))
    assert isinstance(doomed.exception(), JobCancelled) and engine.batches == [["a"]]


def test_a_cancelled_running_batch_stops_at_the_next_step():
    engine = RecordingEngine(seconds=0.8)  # 4 steps of 0.2 s

    async def calls(batcher):
        running = batcher.submit("a", request("a"))
        await asyncio.sleep(0.1)  # inside step 1
        assert batcher.position("a") is None and batcher.cancel("a")
        with pytest.raises(JobCancelled):
            await running
        return await batcher.submit("b", request("b"))

    start = time.monotonic()
    assert asyncio.run(run_batcher(engine, calls, max_wait_s=0)).images == ["b"]
    assert engine.batches == [["a"], ["b"]]
    assert engine.steps_run == 1 + 4  # "a" stopped after its first step
    assert time.monotonic() - start < 1.5


def test_cancelling_one_job_of_a_batch_leaves_the_others_running():
    engine = RecordingEngine(seconds=0.4)

    async def calls(batcher):
        kept, dropped = batcher.submit("a", request("a")), batcher.submit("b", request("b"))
        await asyncio.sleep(0.1)
        assert batcher.cancel("b")
        with pytest.raises(JobCancelled):
            await dropped
        return await kept

    assert asyncio.run(run_batcher(engine, calls)).images == ["a"]
    assert engine.steps_run == 4


def test_an_engine_failure_fails_its_batch_only():
    engine = RecordingEngine(seconds=0)

    async def calls(batcher):
        bad = batcher.submit("x", request("boom"))
        with pytest.raises(RuntimeError, match="out of memory"):
            await bad
        return await batcher.submit("y", request("fine"))

    assert asyncio.run(run_batcher(engine, calls)).images == ["fine"]


def test_step_previews_reach_only_the_jobs_that_asked_for_them():
    engine, listener = RecordingEngine(seconds=0), Listener()

    async def calls(batcher):
        futures = [
            batcher.submit("a", request("a", n=2), previews=True),  # images 0, 1
            batcher.submit("b", request("b")),  # image 2
            batcher.submit("c", request("c"), previews=True),  # image 3
        ]
        await asyncio.gather(*futures)
        await batcher.submit("d", request("d"))  # nobody asks: none rendered
        await asyncio.sleep(0.05)

    asyncio.run(run_batcher(engine, calls, listener=listener))
    assert engine.batches == [["a", "b", "c"], ["d"]]
    assert listener.previews == [{"a": [0, 1], "c": [3]}] * 4 + [{}] * 4
    assert engine.previews_rendered == 4  # rendered only for the batch with jobs that asked


def test_a_request_that_fails_its_batch_fails_alone_and_its_batch_mates_succeed():
    engine = RecordingEngine(seconds=0)

    async def calls(batcher):
        futures = [batcher.submit(name, request(name)) for name in ("a", "boom", "c")]
        return await asyncio.gather(*futures, return_exceptions=True)

    a, boom, c = asyncio.run(run_batcher(engine, calls))
    assert a.images == ["a"] and c.images == ["c"]
    assert isinstance(boom, RuntimeError) and "out of memory" in str(boom)
    assert engine.batches == [["a", "boom", "c"], ["a"], ["boom"], ["c"]]
