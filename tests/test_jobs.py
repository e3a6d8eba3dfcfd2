"""The job queue in SQLite: order, per-user caps, positions, ETAs, cancel, events, recovery."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from engine.settings import Settings
from storage import jobs
from storage.db import connect


async def _submit(db, settings, kind="generate", user="u1", guild="g1"):
    return await jobs.submit_job(db, settings, kind, guild, user, {"request": {"prompt": "a cat"}})


async def test_generations_first_then_first_come_first_served(db, settings: Settings) -> None:
    settings = dataclasses.replace(settings, max_queued_trainings_per_user=5, max_queued_generations_per_user=5)
    train_a = await _submit(db, settings, "train", user="a")
    gen_b = await _submit(db, settings, "generate", user="b")
    train_c = await _submit(db, settings, "train", user="c")
    gen_d = await _submit(db, settings, "generate", user="d")

    assert [await jobs.queue_position(db, j.id) for j in (gen_b, gen_d, train_a, train_c)] == [1, 2, 3, 4]
    assert [j.id for j in await jobs.list_jobs(db)] == [gen_b.id, gen_d.id, train_a.id, train_c.id]

    order = []
    while (job := await jobs.claim_next_job(db, "w1")) is not None:
        order.append(job.id)
        assert job.status == "running" and job.attempts == 1 and job.worker_id == "w1"
        assert await jobs.queue_position(db, job.id) == 0
    assert order == [gen_b.id, gen_d.id, train_a.id, train_c.id]


async def test_per_user_caps_refuse_with_a_plain_message(db, settings: Settings) -> None:
    settings = dataclasses.replace(settings, max_queued_trainings_per_user=1, max_queued_generations_per_user=2)
    await _submit(db, settings, "train", user="alice")
    with pytest.raises(jobs.QueueLimitReached, match="limit is 1"):
        await _submit(db, settings, "train", user="alice")
    with pytest.raises(ValueError, match="made by the training"):
        await _submit(db, settings, "class_images", user="bob")
    await _submit(db, settings, "train", user="bob")  # others are not affected
    await _submit(db, settings, "generate", user="alice")
    await _submit(db, settings, "generate", user="alice")
    with pytest.raises(jobs.QueueLimitReached, match="generations waiting"):
        await _submit(db, settings, "generate", user="alice")

    # Once her training starts it no longer counts as waiting.
    await jobs.claim_next_job(db, "w1", kinds=("train",))
    await _submit(db, settings, "train", user="alice")


async def test_cancel_queued_job_leaves_the_queue_and_running_job_is_flagged(db, settings: Settings) -> None:
    first = await _submit(db, settings, user="a")
    second = await _submit(db, settings, user="b")
    third = await _submit(db, settings, user="c")

    cancelled = await jobs.request_cancel(db, second.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert await jobs.queue_position(db, second.id) is None
    assert await jobs.queue_position(db, third.id) == 2
    assert second.id not in [j.id for j in await jobs.list_jobs(db)]

    running = await jobs.claim_next_job(db, "w1")
    assert running.id == first.id
    flagged = await jobs.request_cancel(db, first.id)
    assert flagged.status == "running" and flagged.cancel_requested
    assert await jobs.cancel_requested(db, first.id)
    assert (await jobs.claim_next_job(db, "w1")).id == third.id

    kinds = [(e.job_id, e.kind) for e in await jobs.events_after(db, 0)]
    assert (second.id, "cancelled") in kinds
    assert (second.id, "started") not in kinds


async def test_events_flow_in_order_and_a_late_subscriber_reads_the_row(db, settings: Settings) -> None:
    job = await _submit(db, settings)
    other = await _submit(db, settings, user="u2")
    start = await jobs.last_event_id(db)
    await jobs.claim_next_job(db, "w1")
    await jobs.set_progress(db, job.id, 0.5, "step 15/30", {"step": 15, "total": 30})
    await jobs.finish_job(db, job.id, "succeeded", {"generation_id": 7, "files": ["generations/7/0.png"]})

    events = await jobs.events_after(db, start, job_ids=[job.id])
    assert [e.kind for e in events] == ["started", "progress", "finished"]
    assert events[1].data == {"step": 15, "total": 30}
    assert events[2].data["files"] == ["generations/7/0.png"]
    assert await jobs.events_after(db, events[-1].id, job_ids=[job.id]) == []
    assert [e.kind for e in await jobs.events_after(db, 0, job_ids=[other.id])] == ["queued"]

    late = await jobs.get_job(db, job.id)
    assert late.status == "succeeded" and late.progress == 1.0 and late.result["generation_id"] == 7
    assert await jobs.estimate_wait_s(db, job.id) is None


async def test_eta_comes_from_recent_durations_of_that_kind(db, settings: Settings) -> None:
    settings = dataclasses.replace(settings, max_queued_generations_per_user=10)
    for _ in range(2):
        job = await _submit(db, settings)
        await jobs.claim_next_job(db, "w1")
        await db.execute(
            "UPDATE jobs SET started_at = '2026-01-01T00:00:00.000Z', finished_at = '2026-01-01T00:00:10.000Z', "
            "status = 'succeeded' WHERE id = ?",
            (job.id,),
        )
    assert await jobs.average_duration_s(db, "generate") == pytest.approx(10.0, abs=0.01)
    first = await _submit(db, settings, user="x")
    second = await _submit(db, settings, user="y")
    assert await jobs.estimate_wait_s(db, first.id) == pytest.approx(10.0, abs=0.01)
    assert await jobs.estimate_wait_s(db, second.id) == pytest.approx(20.0, abs=0.01)

    # A running training's own ETA counts for a training queued behind it, not for generations.
    training = await _submit(db, dataclasses.replace(settings), "train", user="t")
    await jobs.claim_next_job(db, "w1", kinds=("train",))
    await jobs.set_progress(db, training.id, 0.2, "step 2/10", {"step": 2, "total": 10, "eta_s": 100.0})
    assert await jobs.estimate_wait_s(db, training.id) == pytest.approx(100.0)
    assert await jobs.estimate_wait_s(db, first.id) == pytest.approx(10.0, abs=0.01)


async def test_two_connections_claiming_at_once_never_take_the_same_job(settings: Settings) -> None:
    settings = dataclasses.replace(settings, max_queued_generations_per_user=50)
    first, second = await connect(settings.db_path), await connect(settings.db_path)
    try:
        submitted = {(await _submit(first, settings, user=f"u{i}")).id for i in range(20)}

        async def drain(db, name):
            taken = []
            while (job := await jobs.claim_next_job(db, name)) is not None:
                taken.append(job.id)
                await asyncio.sleep(0)
            return taken

        a, b = await asyncio.gather(drain(first, "a"), drain(second, "b"))
        assert sorted(a + b) == sorted(submitted)
        assert not set(a) & set(b)
    finally:
        await first.close()
        await second.close()


async def test_job_of_a_dead_worker_is_requeued_then_failed_after_max_attempts(db, settings: Settings) -> None:
    job = await _submit(db, settings)
    for attempt in (1, 2):
        claimed = await jobs.claim_next_job(db, f"w{attempt}")
        assert claimed.attempts == attempt
        requeued = await jobs.requeue_or_fail(db, job.id, f"w{attempt}", max_attempts=3, why="the worker died")
        assert requeued.status == "queued" and await jobs.queue_position(db, job.id) == 1
    claimed = await jobs.claim_next_job(db, "w3")
    # Another worker's stale view does nothing.
    assert (await jobs.requeue_or_fail(db, job.id, "w2", 3, "x")).status == "running"
    failed = await jobs.requeue_or_fail(db, job.id, "w3", max_attempts=3, why="the worker died")
    assert failed.status == "failed" and "3 tries" in failed.error and "the worker died" in failed.error
    assert (await jobs.events_after(db, 0, [job.id]))[-1].kind == "failed"
