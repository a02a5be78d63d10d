"""The job store's contract: every JobStore implementation passes these tests.

A test module for one implementation imports them (`from store_contract import *`) and provides the
fixture `open_store`: a function that opens a store on the same (initially empty) database each time
it is called, and closes what it opened at the end of the test. The tests run against the real thing.
"""

import asyncio
import time

import pytest

from kleinserve.job import Job, JobStatus, RequestSample, UsageEntry, WorkerRecord, new_job_id
from kleinserve.jobs.queue_policy import INTERRUPTED
from kleinserve.upload import UploadRecord

MODEL = "flux.2-klein-4b"
LEASE_S = 30.0


def run(coroutine):
    return asyncio.run(coroutine)


def queued_job(key="512x512/4/-/[]", images=1, *, model=MODEL, detached=True, created_at=None) -> Job:
    job = Job(new_job_id(), model, {"prompt": "a fox"}, batch_key=key, num_images=images, detached=detached)
    if created_at is not None:
        job.created_at = created_at
    return job


async def add(store, *jobs: Job) -> list[Job]:
    for job in jobs:
        assert await store.add(job, f"inputs of {job.id}".encode())
    return list(jobs)


async def claim(store, max_images=8, ready_before=None, model=MODEL):
    ready_before = time.time() + 1 if ready_before is None else ready_before
    return await store.claim(model, max_images=max_images, lease_s=LEASE_S, ready_before=ready_before)


def test_a_job_round_trips_and_survives_reopening(open_store):
    async def write():
        store = open_store()
        job = Job(new_job_id(), MODEL, {"prompt": "ünïcode 🦊", "seed": 3}, owner="key-1", detached=True)
        job.logs.append({"timestamp": time.time(), "level": "INFO", "message": "queued behind 0 job(s)"})
        await store.add(job, b"\x00inputs")
        claimed = await claim(store)
        await store.log(job.id, "step 1/4")
        assert await store.finish(job.id, JobStatus.SUCCEEDED, result={"seed": 3}, lease=claimed.lease)
        await store.close()
        return job.id

    async def read(job_id):
        store = open_store()
        return await store.get(job_id), await store.get("missing"), await store.inputs(job_id)

    job, missing, inputs = run(read(run(write())))
    assert missing is None
    assert job.status is JobStatus.SUCCEEDED and job.params["prompt"] == "ünïcode 🦊"
    assert job.result == {"seed": 3} and job.owner == "key-1" and job.detached and job.attempts == 1
    assert job.created_at <= job.started_at <= job.finished_at
    assert [entry["message"] for entry in job.logs] == ["queued behind 0 job(s)", "step 1/4", "succeeded"]
    assert inputs is None  # a finished job's inputs are not kept


def test_a_full_queue_records_nothing(open_store):
    async def scenario():
        store = open_store()
        first, second = queued_job(), queued_job()
        assert await store.add(first, b"x", max_queued=1)
        assert not await store.add(second, b"x", max_queued=1)
        return await store.get(second.id), await store.queue_depth(MODEL)

    assert run(scenario()) == (None, 1)


def test_a_claim_takes_the_oldest_job_and_its_compatible_followers_up_to_the_image_limit(open_store):
    async def scenario():
        store = open_store()
        now = time.time()
        a, b, other, c, d = await add(
            store,
            queued_job("A", 2, created_at=now - 5),
            queued_job("A", 4, created_at=now - 4),
            queued_job("B", 1, created_at=now - 3),
            queued_job("A", 4, created_at=now - 2),  # would make 10 > 8: waits for the next batch
            queued_job("A", 1, model="flux.2-klein-9b", created_at=now - 6),  # another model's
        )
        first = await claim(store, max_images=8)
        second = await claim(store, max_images=8)
        third = await claim(store, max_images=8)
        return [a.id, b.id], [other.id], [c.id], first, second, third, await store.get(d.id)

    ab, other, c, first, second, third, d = run(scenario())
    assert [job.id for job in first.jobs] == ab
    assert all(job.status is JobStatus.RUNNING and job.attempts == 1 for job in first.jobs)
    assert [job.id for job in second.jobs] == other and [job.id for job in third.jobs] == c
    assert len({first.lease, second.lease, third.lease}) == 3
    assert d.status is JobStatus.QUEUED


def test_a_batch_that_is_not_full_waits_for_company_until_ready(open_store):
    async def scenario():
        store = open_store()
        (job,) = await add(store, queued_job())
        early = await claim(store, ready_before=job.created_at - 1)
        late = await claim(store, ready_before=job.created_at + 1)
        empty = await claim(store)
        return job, early, late, empty

    job, early, late, empty = run(scenario())
    assert early.jobs == [] and early.ready_at == pytest.approx(job.created_at)
    assert [j.id for j in late.jobs] == [job.id]
    assert empty.jobs == [] and empty.ready_at is None


def test_positions_and_depth_follow_the_queue(open_store):
    async def scenario():
        store = open_store()
        now = time.time()
        jobs = await add(store, *(queued_job(f"K{i}", created_at=now + i) for i in range(3)))
        before = [await store.queue_position(job.id) for job in jobs]
        await claim(store)
        after = [await store.queue_position(job.id) for job in jobs]
        return before, after, await store.queue_depth(MODEL), await store.queue_position("missing")

    assert run(scenario()) == ([0, 1, 2], [None, 0, 1], 2, None)


def test_claimed_inputs_are_readable_and_a_finish_deletes_them(open_store):
    async def scenario():
        store = open_store()
        (job,) = await add(store, queued_job())
        claimed = await claim(store)
        inputs = await store.inputs(job.id)
        await store.finish(job.id, JobStatus.SUCCEEDED, result={}, lease=claimed.lease)
        return job, inputs, await store.inputs(job.id)

    job, inputs, after = run(scenario())
    assert inputs == f"inputs of {job.id}".encode() and after is None


def test_a_cancel_ends_the_job_now_and_its_worker_sees_it_at_renewal(open_store):
    async def scenario():
        store = open_store()
        running, queued = await add(store, queued_job("A"), queued_job("B"))
        claimed = await claim(store, max_images=1)
        held_before = await store.renew(claimed.lease, LEASE_S)
        error = {"type": "cancelled", "message": "cancelled at the client's request", "param": None}
        outcomes = [await store.cancel(running.id, error), await store.cancel(queued.id, error)]
        held_after = await store.renew(claimed.lease, LEASE_S)
        late = await store.finish(running.id, JobStatus.SUCCEEDED, result={}, lease=claimed.lease)
        again = await store.cancel(running.id, error)
        nothing_left = await claim(store)
        return (running.id, held_before, outcomes, held_after, late, again, nothing_left,
                await store.get(running.id), await store.cancel("missing", error))  # fmt: skip

    running_id, held_before, outcomes, held_after, late, again, nothing_left, job, unknown = run(scenario())
    assert held_before == {running_id} and held_after == set()
    assert outcomes == ["cancelled", "cancelled"] and again == "finished" and unknown is None
    assert late is False  # a worker's late write changes nothing
    assert job.status is JobStatus.CANCELLED and job.error["type"] == "cancelled"
    assert nothing_left.jobs == []


def test_a_renewal_notes_its_step_in_the_log_of_each_job_it_still_holds(open_store):
    async def scenario():
        store = open_store()
        first, second = await add(store, queued_job("A"), queued_job("A"))
        claimed = await claim(store, max_images=2)
        held = await store.renew(claimed.lease, LEASE_S, "step 1/4")
        error = {"type": "cancelled", "message": "cancelled at the client's request", "param": None}
        await store.cancel(second.id, error)
        still = await store.renew(claimed.lease, LEASE_S, "step 2/4")
        quiet = await store.renew(claimed.lease, LEASE_S)
        records = await store.get(first.id), await store.get(second.id)
        return (first.id, second.id), (held, still, quiet), *records

    ids, renewals, first, second = run(scenario())
    assert renewals == (set(ids), {ids[0]}, {ids[0]})
    assert [entry["message"] for entry in first.logs] == ["step 1/4", "step 2/4"]
    assert [entry["message"] for entry in second.logs][:1] == ["step 1/4"]
    assert "step 2/4" not in [entry["message"] for entry in second.logs]  # not held any more: no note


def test_expired_leases_requeue_detached_jobs_and_fail_the_rest(open_store):
    async def scenario():
        store = open_store()
        detached, waited_on = await add(store, queued_job("A"), queued_job("B", detached=False))
        first = await claim(store, max_images=1)
        second = await claim(store, max_images=1)
        result = await store.requeue_expired(time.time() + LEASE_S + 1, max_attempts=3)
        late = await store.finish(detached.id, JobStatus.SUCCEEDED, result={}, lease=first.lease)
        rerun = await claim(store)
        return (detached.id, waited_on.id, second, result, late, rerun,
                await store.get(detached.id), await store.get(waited_on.id))  # fmt: skip

    detached_id, waited_on_id, _second, result, late, rerun, detached, waited_on = run(scenario())
    assert result == ([detached_id], [waited_on_id])
    assert late is False  # the dead worker's lease is gone
    assert [job.id for job in rerun.jobs] == [detached_id] and rerun.jobs[0].attempts == 2
    assert any("attempt 1 of 3 was interrupted" in entry["message"] for entry in detached.logs)
    assert waited_on.status is JobStatus.FAILED and waited_on.error == INTERRUPTED


def test_a_job_fails_with_the_reason_after_its_last_attempt(open_store):
    async def scenario():
        store = open_store()
        (job,) = await add(store, queued_job())
        for _ in range(3):
            await claim(store)
            await store.requeue_expired(time.time() + LEASE_S + 1, max_attempts=3)
        return await store.get(job.id)

    job = run(scenario())
    assert job.status is JobStatus.FAILED and job.attempts == 3
    assert "each of its 3 attempts" in job.error["message"]


def test_a_renewed_lease_does_not_expire(open_store):
    async def scenario():
        store = open_store()
        await add(store, queued_job())
        claimed = await claim(store)
        await store.renew(claimed.lease, 1000.0)
        return await store.requeue_expired(time.time() + LEASE_S + 1, max_attempts=3)

    assert run(scenario()) == ([], [])


def test_a_released_lease_requeues_without_counting_the_attempt(open_store):
    async def scenario():
        store = open_store()
        (job,) = await add(store, queued_job())
        claimed = await claim(store)
        released = await store.release(claimed.lease)
        return job.id, released, await store.get(job.id)

    job_id, released, job = run(scenario())
    assert released == [job_id] and job.status is JobStatus.QUEUED and job.attempts == 0


def test_queued_jobs_whose_callers_are_gone_fail_and_detached_ones_stay(open_store):
    async def scenario():
        store = open_store()
        detached, waited_on = await add(store, queued_job(), queued_job(detached=False))
        failed = await store.fail_waiting()
        return detached.id, waited_on.id, failed, await store.get(detached.id), await store.get(waited_on.id)

    _detached_id, waited_on_id, failed, detached, waited_on = run(scenario())
    assert failed == [waited_on_id]
    assert detached.status is JobStatus.QUEUED and waited_on.status is JobStatus.FAILED


def test_only_queued_ends_only_a_queued_job(open_store):
    async def scenario():
        store = open_store()
        running, queued = await add(store, queued_job("A"), queued_job("B"))
        await claim(store, max_images=1)
        error = {"type": "shutting_down", "message": "the server is shutting down", "param": None}
        return [
            await store.finish(running.id, JobStatus.FAILED, error=error, only_queued=True),
            await store.finish(queued.id, JobStatus.FAILED, error=error, only_queued=True),
            await store.finish(queued.id, JobStatus.SUCCEEDED, result={}),  # already ended
        ]

    assert run(scenario()) == [False, True, False]


def test_an_end_under_a_lease_asked_again_is_true_once_recorded_and_adds_nothing(open_store):
    """A worker whose commit went through but whose answer was lost (the database restarted) asks again:
    the end it recorded is its own, so it must not take the job for lost and drop its images."""

    async def scenario():
        store = open_store()
        job, other = await add(store, queued_job("A"), queued_job("B"))
        first, second = await claim(store, max_images=1), await claim(store, max_images=1)
        entry = usage_of(job, DAY_1, 1, 0.25, 0.5, 0.01)
        ends = [await store.finish(job.id, JobStatus.SUCCEEDED, result={"n": 1}, lease=first.lease,
                                   usage=entry) for _ in range(2)]  # fmt: skip
        answers = [
            await store.finish(job.id, JobStatus.SUCCEEDED, result={"n": 2}, lease=second.lease),  # not held
            await store.finish(job.id, JobStatus.FAILED, error=INTERRUPTED, lease=first.lease),  # not its end
        ]
        error = {"type": "server_error", "message": "generation failed", "param": None}
        failed = await store.finish(other.id, JobStatus.FAILED, error=error, lease=second.lease)
        records = await store.get(job.id), await store.get(other.id)
        return ends, answers, failed, *records, await store.usage_by_day(None)

    ends, answers, failed, job, other, usage = run(scenario())
    assert ends == [True, True] and answers == [False, False] and failed is True
    assert job.status is JobStatus.SUCCEEDED and job.result == {"n": 1}
    assert [entry["message"] for entry in job.logs] == ["succeeded"]  # one end, one line
    assert [entry["message"] for entry in other.logs] == ["failed: generation failed"]
    assert [row["requests"] for row in usage] == [1]


def test_inline_images_are_kept_until_their_time(open_store):
    async def scenario():
        store = open_store()
        kept, gone = await add(store, queued_job(), queued_job())
        await store.put_inline(kept.id, [b"png 0", b"png 1"], time.time() + 60)
        await store.put_inline(gone.id, [b"png"], time.time() - 1)
        return await store.inline(kept.id), await store.inline(gone.id), await store.inline("missing")

    assert run(scenario()) == ([b"png 0", b"png 1"], None, None)


def test_inline_images_under_a_lease_are_kept_only_while_it_holds_the_job(open_store):
    async def scenario():
        store = open_store()
        (job,) = await add(store, queued_job())
        first = await claim(store)
        await store.requeue_expired(time.time() + LEASE_S + 1, max_attempts=3)  # as if its worker froze
        second = await claim(store)
        late = await store.put_inline(job.id, [b"late"], time.time() + 60, lease=first.lease)
        held = await store.put_inline(job.id, [b"held"], time.time() + 60, lease=second.lease)
        assert await store.finish(job.id, JobStatus.SUCCEEDED, result={}, lease=second.lease)
        after_end = await store.put_inline(job.id, [b"after"], time.time() + 60, lease=second.lease)
        return late, held, after_end, await store.inline(job.id)

    assert run(scenario()) == (False, True, False, [b"held"])


def test_expired_returns_old_finished_jobs_and_delete_removes_everything(open_store):
    async def scenario():
        store = open_store()
        old_done, old_queued = await add(
            store, queued_job(created_at=time.time() - 100), queued_job(created_at=time.time() - 100)
        )
        await store.finish(old_done.id, JobStatus.SUCCEEDED, result={}, only_queued=True)
        await store.put_inline(old_done.id, [b"png"], time.time() + 60)
        expired = await store.expired(time.time() - 50)
        await store.delete([job.id for job in expired])
        return (old_done.id, [job.id for job in expired], await store.get(old_done.id),
                await store.inline(old_done.id), await store.get(old_queued.id))  # fmt: skip

    done_id, expired, gone, inline, still_queued = run(scenario())
    assert expired == [done_id] and gone is None and inline is None
    assert still_queued.status is JobStatus.QUEUED


def test_recent_lists_an_owners_jobs_newest_first(open_store):
    async def scenario():
        store = open_store()
        now = time.time()
        mine = [queued_job(created_at=now + i) for i in range(3)]
        for job in mine:
            job.owner = "key-a"
        theirs = queued_job()
        theirs.owner = "key-b"
        await add(store, *mine, theirs)
        await claim(store, max_images=1)
        return (
            [job.id for job in mine],
            [job.id for job in await store.recent("key-a")],
            [job.id for job in await store.recent("key-a", JobStatus.QUEUED, limit=1)],
            [job.id for job in await store.recent("key-b")],
            await store.recent(None),
        )

    mine, listed, newest_queued, theirs, open_server = run(scenario())
    assert listed == mine[::-1] and newest_queued == [mine[2]] and len(theirs) == 1 and open_server == []


# --- the usage ledger ---------------------------------------------------------------------------------

DAY_1 = 1_709_287_200.0  # 2024-03-01 10:00 UTC
DAY_2 = DAY_1 + 86_400  # 2024-03-02 10:00 UTC
MODEL_9B = "flux.2-klein-9b"


def usage_of(job: Job, at: float, images: int, megapixels: float, seconds: float, cost: float | None):
    return UsageEntry(job.id, job.owner, job.model, at, images, megapixels, seconds, cost)


async def succeed(store, owner, at, images=1, megapixels=0.25, seconds=0.5, cost=None, model=MODEL) -> Job:
    """A job of `owner` that ends here, its usage recorded with it."""
    job = queued_job(images=images, model=model)
    job.owner = owner
    await add(store, job)
    entry = usage_of(job, at, images, megapixels, seconds, cost)
    assert await store.finish(job.id, JobStatus.SUCCEEDED, result={}, usage=entry)
    return job


def test_usage_is_recorded_only_when_the_finish_ends_the_job(open_store):
    async def scenario():
        store = open_store()
        lost, cancelled = await add(store, queued_job("A"), queued_job("B"))
        first, second = await claim(store, max_images=1), await claim(store, max_images=1)
        error = {"type": "cancelled", "message": "cancelled at the client's request", "param": None}
        await store.cancel(cancelled.id, error)
        await store.requeue_expired(time.time() + LEASE_S + 1, max_attempts=3)  # `lost` is queued again
        late = [
            await store.finish(job.id, JobStatus.SUCCEEDED, result={}, lease=claimed.lease,
                               usage=usage_of(job, DAY_1, 1, 0.25, 0.5, 0.01))
            for job, claimed in ((lost, first), (cancelled, second))
        ]  # fmt: skip
        between = await store.usage_by_day(None)
        rerun = await claim(store, max_images=1)
        entry = usage_of(lost, DAY_1, 2, 0.5, 1, 0.02)
        ended = await store.finish(lost.id, JobStatus.SUCCEEDED, result={}, lease=rerun.lease, usage=entry)
        return late, between, ended, await store.usage_by_day(None)

    late, between, ended, rows = run(scenario())
    assert late == [False, False] and between == []  # the late writes of a lost lease add nothing
    assert ended is True
    assert [(row["requests"], row["images"], row["cost_usd"]) for row in rows] == [
        (1, 2, pytest.approx(0.02))
    ]


def test_usage_sums_per_day_owner_and_model(open_store):
    async def scenario():
        store = open_store()
        await succeed(store, "key-a", DAY_1, images=1, megapixels=0.25, seconds=0.5, cost=0.0025)
        await succeed(store, "key-a", DAY_1 + 60, images=2, megapixels=1.5, seconds=1.25, cost=0.015)
        await succeed(store, "key-a", DAY_1 + 120, images=1, megapixels=1.0, seconds=2.0, model=MODEL_9B)
        await succeed(store, "key-a", DAY_2, images=4, megapixels=4.0, seconds=3.0, cost=0.04)
        await succeed(store, "key-b", DAY_1, images=1, megapixels=0.5, seconds=0.25, cost=0.005)
        return await store.usage_by_day("key-a")

    rows = run(scenario())
    assert [(row["day"], row["owner"], row["model"]) for row in rows] == [
        ("2024-03-01", "key-a", MODEL),
        ("2024-03-01", "key-a", MODEL_9B),
        ("2024-03-02", "key-a", MODEL),
    ]
    first, nine_b, second_day = rows
    assert (first["requests"], first["images"]) == (2, 3)
    assert first["megapixels"] == pytest.approx(1.75) and first["engine_seconds"] == pytest.approx(1.75)
    assert first["cost_usd"] == pytest.approx(0.0175)
    assert (nine_b["requests"], nine_b["images"], nine_b["cost_usd"]) == (1, 1, None)  # no price: no cost
    assert (second_day["requests"], second_day["images"]) == (1, 4)
    assert second_day["megapixels"] == pytest.approx(4.0) and second_day["cost_usd"] == pytest.approx(0.04)


def test_usage_is_each_owners_own_unless_all_owners_are_asked_for(open_store):
    async def scenario():
        store = open_store()
        await succeed(store, "key-a", DAY_1, megapixels=0.25)
        await succeed(store, "key-b", DAY_1, megapixels=0.5)
        await succeed(store, "key-b", DAY_1 + 1, megapixels=0.5)
        await succeed(store, None, DAY_1, megapixels=1.0)  # made on an open server
        return {
            who: await store.usage_by_day(who) for who in ("key-a", "key-b", None, "key-c")
        }, await store.usage_by_day("key-a", all_owners=True)

    mine, everyone = run(scenario())
    assert [(row["owner"], row["requests"]) for row in mine["key-a"]] == [("key-a", 1)]
    assert [(row["owner"], row["requests"]) for row in mine["key-b"]] == [("key-b", 2)]
    assert [(row["owner"], row["megapixels"]) for row in mine[None]] == [(None, pytest.approx(1.0))]
    assert mine["key-c"] == []
    assert sorted((row["owner"] or "", row["requests"]) for row in everyone) == [
        ("", 1), ("key-a", 1), ("key-b", 2)
    ]  # fmt: skip


def test_usage_filters_by_model_and_time_range(open_store):
    async def scenario():
        store = open_store()
        await succeed(store, "key-a", DAY_1, megapixels=0.25)
        await succeed(store, "key-a", DAY_1 + 10, megapixels=1.0, model=MODEL_9B)
        await succeed(store, "key-a", DAY_2, megapixels=0.5)
        usage = store.usage_by_day
        return [
            await usage("key-a", model=MODEL_9B),
            await usage("key-a", since=DAY_1 + 10),  # since is inclusive
            await usage("key-a", until=DAY_1 + 10),  # until is exclusive
            await usage("key-a", since=DAY_1 + 1, until=DAY_2, model=MODEL),
            await usage("key-a", all_owners=True, model=MODEL, since=DAY_2),
        ]

    by_model, since, until, empty, everyone_later = run(scenario())
    assert [(row["day"], row["model"]) for row in by_model] == [("2024-03-01", MODEL_9B)]
    assert [(row["day"], row["model"]) for row in since] == [("2024-03-01", MODEL_9B), ("2024-03-02", MODEL)]
    assert [(row["day"], row["model"], row["megapixels"]) for row in until] == [
        ("2024-03-01", MODEL, pytest.approx(0.25))
    ]
    assert empty == []
    assert [(row["day"], row["megapixels"]) for row in everyone_later] == [("2024-03-02", pytest.approx(0.5))]


def test_usage_outlives_the_jobs_retention_deletes_and_a_reopening(open_store):
    async def scenario():
        store = open_store()
        job = await succeed(store, "key-a", DAY_1, images=2, megapixels=0.5, seconds=1.0, cost=0.005)
        await store.delete([old.id for old in await store.expired(time.time() + 1)])
        gone = await store.get(job.id)
        await store.close()
        store = open_store()
        return gone, await store.usage_by_day("key-a")

    gone, rows = run(scenario())
    assert gone is None
    assert [(row["day"], row["requests"], row["images"], row["cost_usd"]) for row in rows] == [
        ("2024-03-01", 1, 2, pytest.approx(0.005))
    ]


def sample(at: float, model: str = MODEL, *, status: int = 200, images: int = 1) -> RequestSample:
    return RequestSample(at, model, seconds=0.5 + at % 7, ttfb=0.25, status=status, images=images)


def test_request_samples_round_trip_oldest_first_and_survive_reopening(open_store):
    now = time.time()
    recorded = [sample(now - 30, images=2), sample(now - 50, "flux.2-klein-9b", status=500, images=0),
                sample(now - 10, status=400, images=0)]  # fmt: skip

    async def scenario():
        store = open_store()
        for entry in recorded:
            await store.record_sample(entry)
        await store.close()
        return await open_store().samples(now - 60)

    assert run(scenario()) == sorted(recorded, key=lambda entry: entry.at)


def test_request_samples_filter_by_time_and_model(open_store):
    now = time.time()

    async def scenario():
        store = open_store()
        for entry in (sample(now - 100), sample(now - 20), sample(now - 20, "flux.2-klein-9b"), sample(now)):
            await store.record_sample(entry)
        return (
            await store.samples(now - 20),  # since is inclusive
            await store.samples(now - 20, model="flux.2-klein-9b"),
            await store.samples(now - 1000, model="flux.2-klein-base-4b"),
        )

    recent, of_9b, none = run(scenario())
    assert [(entry.at, entry.model) for entry in recent] == [
        (now - 20, MODEL), (now - 20, "flux.2-klein-9b"), (now, MODEL)
    ]  # fmt: skip
    assert [(entry.at, entry.model) for entry in of_9b] == [(now - 20, "flux.2-klein-9b")]
    assert none == []


def test_forgotten_samples_are_gone_and_newer_ones_stay(open_store):
    now = time.time()

    async def scenario():
        store = open_store()
        for at in (now - 7200, now - 3601, now - 3600, now - 5):
            await store.record_sample(sample(at))
        await store.forget_samples(now - 3600)  # before is exclusive
        return [entry.at for entry in await store.samples(0)]

    assert run(scenario()) == [now - 3600, now - 5]


# --- signals, progress and workers (scale-out) ----------------------------------------------------------
# A wait listens from its first step, so a waiter started as a task is parked after one turn of the loop.
# Waiters here wait 60 s; being woken means returning long before that (the 30 s bound is a generous one).


async def parked(wait) -> asyncio.Task:
    waiter = asyncio.ensure_future(wait)
    await asyncio.sleep(0)
    return waiter


async def woken(waiter: asyncio.Task) -> bool:
    await asyncio.wait_for(waiter, 30)
    return True


def test_a_waiter_for_queued_work_is_woken_by_an_add_a_release_and_a_requeue(open_store):
    async def scenario():
        store = open_store()
        waiter = await parked(store.wait_queued(MODEL, 60))
        await add(store, queued_job())
        added = await woken(waiter)
        claimed = await claim(store)
        waiter = await parked(store.wait_queued(MODEL, 60))
        await store.release(claimed.lease)
        released = await woken(waiter)
        await claim(store)
        waiter = await parked(store.wait_queued(MODEL, 60))
        await store.requeue_expired(time.time() + LEASE_S + 1, max_attempts=3)
        requeued = await woken(waiter)
        return added, released, requeued, await store.wait_queued(MODEL, 0.05)  # nothing: it times out

    assert run(scenario()) == (True, True, True, None)


def test_a_waiter_for_a_job_is_woken_by_its_claim_its_steps_and_its_end(open_store):
    async def scenario():
        store = open_store()
        (job,) = await add(store, queued_job())
        outcomes = []
        waiter = await parked(store.wait_changed(job.id, 60))
        claimed = await claim(store)
        outcomes.append(await woken(waiter))
        for step in (1, 2):
            waiter = await parked(store.wait_changed(job.id, 60))
            assert await store.record_progress(job.id, claimed.lease, step, 2, [])
            outcomes.append(await woken(waiter))
        waiter = await parked(store.wait_changed(job.id, 60))
        await store.finish(job.id, JobStatus.SUCCEEDED, result={}, lease=claimed.lease)
        outcomes.append(await woken(waiter))
        return outcomes, await store.wait_changed(job.id, 0.05)

    assert run(scenario()) == ([True] * 4, None)


def test_progress_is_written_only_under_the_lease_and_replaces_the_last_step(open_store):
    async def scenario():
        store = open_store()
        job, other = await add(store, queued_job("A"), queued_job("B"))
        before = await store.progress(job.id)
        claimed = await claim(store, max_images=1)
        first = await store.record_progress(job.id, claimed.lease, 1, 4, [b"\x89PNG one", b""])
        second = await store.record_progress(job.id, claimed.lease, 2, 4, [b"\x89PNG two"])
        stranger = await store.record_progress(job.id, "not-the-lease", 3, 4, [])
        queued = await store.record_progress(other.id, claimed.lease, 1, 4, [])
        latest = await store.progress(job.id)
        error = {"type": "cancelled", "message": "cancelled at the client's request", "param": None}
        await store.cancel(job.id, error)
        late = await store.record_progress(job.id, claimed.lease, 3, 4, [])
        return before, (first, second, stranger, queued, late), latest, await store.progress(job.id)

    before, writes, latest, after = run(scenario())
    assert before is None and writes == (True, True, False, False, False)
    assert (latest.step, latest.total, latest.previews) == (2, 4, [b"\x89PNG two"])
    assert latest.at <= time.time()
    assert after is None  # an ended job has no step in progress


def test_workers_report_by_heartbeat_and_are_listed_while_seen(open_store):
    now = time.time()
    loading = {MODEL: {"state": "loading"}}
    ready = {MODEL: {"state": "ready"}, "flux.2-klein-9b": {"state": "failed", "error": "out of memory"}}

    async def scenario():
        store = open_store()
        await store.heartbeat(WorkerRecord("w-old", "host-a", 11, loading, now - 300, now - 200))
        await store.heartbeat(WorkerRecord("w-new", "host-b", 22, loading, now - 10, now - 10))
        await store.heartbeat(WorkerRecord("w-new", "host-b", 22, ready, now - 10, now))  # replaces
        await store.close()
        store = open_store()
        return await store.workers(now - 60), await store.workers(now - 1000)

    recent, all_seen = run(scenario())
    assert recent == [WorkerRecord("w-new", "host-b", 22, ready, now - 10, now)]
    assert [worker.id for worker in all_seen] == ["w-old", "w-new"]  # oldest started first


# --- webhooks -----------------------------------------------------------------------------------------


def with_webhook(job: Job, url: str = "https://hooks.example.com/done") -> Job:
    job.webhook = url
    return job


def test_a_webhook_is_claimed_once_its_job_ended_and_by_one_claimer_at_a_time(open_store):
    async def scenario():
        store = open_store()
        hooked, plain, waiting = await add(
            store, with_webhook(queued_job()), queued_job(), with_webhook(queued_job())
        )
        while_queued = await store.claim_webhooks(limit=10, lease_s=LEASE_S)
        for job in (hooked, plain):
            assert await store.finish(job.id, JobStatus.SUCCEEDED, result={})
        first = await store.claim_webhooks(limit=10, lease_s=LEASE_S)
        second = await store.claim_webhooks(limit=10, lease_s=LEASE_S)  # the first claim's lease holds
        return while_queued, first, second, waiting.id, hooked.id

    while_queued, first, second, waiting, hooked = run(scenario())
    assert while_queued == [] and first == [hooked] and second == []
    assert waiting not in first  # its job has not ended


def test_an_expired_webhook_lease_is_claimed_again_and_a_done_one_never(open_store):
    async def scenario():
        store = open_store()
        again, done = await add(store, with_webhook(queued_job()), with_webhook(queued_job()))
        for job in (again, done):
            await store.cancel(job.id, {"type": "cancelled", "message": "cancelled", "param": None})
        first = await store.claim_webhooks(limit=10, lease_s=0.05)
        await store.webhook_done(done.id)
        await asyncio.sleep(0.1)
        later = await store.claim_webhooks(limit=10, lease_s=LEASE_S)
        return again.id, done.id, first, later

    again, done, first, later = run(scenario())
    assert sorted(first) == sorted([again, done]) and later == [again]


def test_a_webhook_added_held_is_not_claimed_until_its_hold_is_released(open_store):
    """A job added with webhook_held_s (its submitter follows it and sends its end) is not claimed once it
    ended while the hold lasts or is renewed; released, it is claimed at once."""

    async def scenario():
        store = open_store()
        held = with_webhook(queued_job())
        held.webhook_held_s = LEASE_S
        (job,) = await add(store, held)
        await store.finish(job.id, JobStatus.SUCCEEDED, result={})
        while_held = await store.claim_webhooks(limit=10, lease_s=LEASE_S)
        await store.hold_webhook(job.id, time.time() + LEASE_S)
        renewed = await store.claim_webhooks(limit=10, lease_s=LEASE_S)
        await store.hold_webhook(job.id, None)
        released = await store.claim_webhooks(limit=10, lease_s=LEASE_S)
        return job.id, while_held, renewed, released

    job_id, while_held, renewed, released = run(scenario())
    assert while_held == [] and renewed == [] and released == [job_id]


def test_a_deleted_jobs_webhook_is_gone(open_store):
    async def scenario():
        store = open_store()
        (job,) = await add(store, with_webhook(queued_job()))
        await store.finish(job.id, JobStatus.FAILED, error=INTERRUPTED)
        await store.delete([job.id])
        return await store.claim_webhooks(limit=10, lease_s=LEASE_S)

    assert run(scenario()) == []


def an_upload(upload_id: str, owner: str | None, created_at: float, expires_at: float) -> UploadRecord:
    return UploadRecord(upload_id, owner, "fox.png", "image/png", 3, "sha", "md5", {"ünï": [1, "x"]},
                        f"{upload_id}-folder/0.png", created_at, expires_at)  # fmt: skip


def test_uploads_are_their_owners_newest_first_and_survive_reopening(open_store):
    now = time.time()
    mine = [an_upload("a", "key-1", now - 2, now + 60), an_upload("b", "key-1", now - 1, now + 60)]
    others = [an_upload("c", "key-2", now, now + 60), an_upload("d", None, now, now + 60)]

    async def write():
        store = open_store()
        for record in mine + others:
            await store.add_upload(record)
        await store.close()

    async def read():
        store = open_store()
        return (await store.upload("a", "key-1", now), await store.upload("a", "key-2", now),
                await store.upload("a", None, now), await store.upload("d", None, now),
                await store.uploads("key-1", now, 10), await store.uploads("key-1", now, 1))  # fmt: skip

    run(write())
    own, others_view, open_view, unowned, listed, first_page = run(read())
    assert own == mine[0] and others_view is None and open_view is None and unowned == others[1]
    assert listed == [mine[1], mine[0]] and first_page == [mine[1]]


def test_an_upload_is_deleted_only_by_its_owner_and_expired_ones_are_gone(open_store):
    now = time.time()

    async def scenario():
        store = open_store()
        for record in (an_upload("a", "key-1", now, now + 60), an_upload("old", "key-1", now - 90, now - 1)):
            await store.add_upload(record)
        refused = await store.delete_upload("a", "key-2")
        hidden = await store.upload("old", "key-1", now), await store.uploads("key-1", now, 10)
        expired = await store.expire_uploads(now)
        deleted = await store.delete_upload("a", "key-1")
        return refused, hidden, expired, deleted, await store.upload("a", "key-1", now)

    refused, (old, listed), expired, deleted, after = run(scenario())
    assert refused is None and old is None and [record.id for record in listed] == ["a"]
    assert [record.id for record in expired] == ["old"] and expired[0].storage_key == "old-folder/0.png"
    assert deleted.id == "a" and after is None
