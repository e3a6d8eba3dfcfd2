"""The job queue on a real SQLite file and a real PostgreSQL: order, per-member caps, positions,
ETAs, cancel, events in commit order, leases and fencing, recovery, and what happens when
several processes (each with its own pool) submit, claim and write at the same time."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import DBAPIError, PendingRollbackError

from config.settings import Settings
from engine.usecases.jobs.registry import describe
from engine.usecases.queueing import queue_training
from engine.usecases.training.params import TrainingParams
from storage import jobs
from storage.db import Database, Queries, open_database
from storage.dialects import utc_now_minus
from storage.discord_posts import add_discord_job, get_discord_job
from storage.fencing import FencedDatabase
from storage.files import FileStore
from storage.pets import create_pet, get_pet
from storage.runs import get_run, insert_run, list_runs
from storage.schema import job_events, pets
from storage.schema import jobs as jobs_table

from conftest import distributed
from training_helpers import pet_with_photos

pytestmark = pytest.mark.both_modes


@pytest.fixture
def settings(tmp_path: Path, mode: str, request: pytest.FixtureRequest) -> Settings:
    """A fresh installation (SQLite + data folder, or PostgreSQL + a bucket); the queue needs no model."""
    local = Settings(data_dir=tmp_path / "data", vae=None, device="cpu", resolution=128)
    return distributed(local, request) if mode == "distributed" else local


async def _submit(db, settings, kind="generate", user="u1", guild="g1", prompt="a cat", run_id=None):
    return await jobs.submit_job(db, settings, kind, guild, user, {"request": {"prompt": prompt}}, run_id=run_id)


@pytest.fixture
async def pools(settings: Settings) -> AsyncIterator[list[Database]]:
    """Four more Database objects on the same database: as four processes (bot, workers) would have."""
    opened = [await open_database(settings.database_url) for _ in range(4)]
    yield opened
    for database in opened:
        await database.close()


async def all_events(db, job_id: int) -> list[jobs.JobEvent]:
    return await jobs.events_after(db, jobs.START, [job_id])


# --- order, caps, positions -------------------------------------------------------------


async def test_generations_first_then_first_come_first_served(db, settings: Settings) -> None:
    settings = dataclasses.replace(settings, max_queued_trainings_per_user=5, max_queued_generations_per_user=5)
    train_a = await _submit(db, settings, "train", user="a")
    gen_b = await _submit(db, settings, "generate", user="b")
    train_c = await _submit(db, settings, "train", user="c")
    gen_d = await _submit(db, settings, "generate", user="d")

    assert [await jobs.queue_position(db, j.id) for j in (gen_b, gen_d, train_a, train_c)] == [1, 2, 3, 4]
    assert [j.id for j in await jobs.list_jobs(db)] == [gen_b.id, gen_d.id, train_a.id, train_c.id]
    assert await jobs.has_queued(db, ("train",)) and await jobs.has_queued(db)

    order = []
    while (job := await jobs.claim_next_job(db, "w1")) is not None:
        order.append(job.id)
        assert job.status == "running" and job.attempts == 1 and job.worker_id == "w1"
        assert job.lease == jobs.JobLease(job.id, "w1", 1)
        assert await jobs.queue_position(db, job.id) == 0
    assert order == [gen_b.id, gen_d.id, train_a.id, train_c.id]
    assert not await jobs.has_queued(db)
    assert sorted(j.id for j in await jobs.list_jobs(db)) == sorted(order)


async def test_a_worker_takes_only_the_kinds_it_serves(db, settings: Settings) -> None:
    training = await _submit(db, settings, "train", user="a")
    painting = await _submit(db, settings, "generate", user="b")
    claimed = await jobs.claim_next_job(db, "trainer", kinds=("train",))
    assert claimed is not None and claimed.id == training.id
    assert await jobs.claim_next_job(db, "trainer", kinds=("train",)) is None
    assert (await jobs.get_job(db, painting.id)).status == "queued"


async def test_per_member_caps_per_kind_refuse_with_a_plain_message(db, settings: Settings) -> None:
    settings = dataclasses.replace(settings, max_queued_trainings_per_user=1, max_queued_generations_per_user=2)
    await _submit(db, settings, "train", user="alice")
    with pytest.raises(jobs.QueueLimitReached, match=r"You already have 1 training waiting \(the limit is 1\)"):
        await _submit(db, settings, "train", user="alice")
    with pytest.raises(ValueError, match="unknown job kind 'class_images'"):
        await _submit(db, settings, "class_images", user="bob")
    await _submit(db, settings, "train", user="bob")  # others are not affected
    # Her waiting training does not count against her generations: the limit is per kind.
    await _submit(db, settings, "generate", user="alice")
    await _submit(db, settings, "generate", user="alice")
    with pytest.raises(jobs.QueueLimitReached, match="2 generations waiting"):
        await _submit(db, settings, "generate", user="alice")
    refused = [j for j in await jobs.list_jobs(db) if j.user_id == "alice"]
    assert sorted(j.kind for j in refused) == ["generate", "generate", "train"]  # nothing refused was queued

    # Once her training starts it no longer counts as waiting.
    await jobs.claim_next_job(db, "w1", kinds=("train",))
    await _submit(db, settings, "train", user="alice")


async def test_a_job_describes_itself_for_listings(db, settings: Settings) -> None:
    painting = await _submit(db, settings, prompt="Thor on a throne")
    assert describe(painting) == "🎨 `Thor on a throne`"
    pet = await create_pet(db, "g1", "u1", "Thor", "cat")
    run_id = await insert_run(db, pet.id, {"steps": 10}, 10)
    training = await jobs.submit_job(db, settings, "train", "g1", "u1", {"pet_id": pet.id}, run_id=run_id)
    assert describe(training) == f"🏋️ training (run #{run_id})"
    assert training.run_id == run_id


# --- cancel, events, ETA ----------------------------------------------------------------


async def test_cancel_queued_job_leaves_the_queue_and_running_job_is_flagged(db, settings: Settings) -> None:
    first = await _submit(db, settings, user="a")
    second = await _submit(db, settings, user="b")
    third = await _submit(db, settings, user="c")

    cancelled = await jobs.request_cancel(db, second.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert await jobs.queue_position(db, second.id) is None
    assert await jobs.queue_position(db, third.id) == 2
    assert second.id not in [j.id for j in await jobs.list_jobs(db)]
    assert second.id in [j.id for j in await jobs.list_jobs(db, active_only=False)]

    running = await jobs.claim_next_job(db, "w1")
    assert running.id == first.id
    flagged = await jobs.request_cancel(db, first.id)
    assert flagged.status == "running" and flagged.cancel_requested
    assert await jobs.cancels_among(db, [first.id, third.id]) == {first.id}
    assert (await jobs.claim_next_job(db, "w1")).id == third.id
    # Cancelling an ended job changes nothing.
    assert (await jobs.request_cancel(db, second.id)).status == "cancelled"
    with pytest.raises(jobs.JobNotFound, match="no job #999"):
        await jobs.request_cancel(db, 999)

    kinds = [(e.job_id, e.kind) for e in await jobs.events_after(db, jobs.START)]
    assert (second.id, "cancelled") in kinds
    assert (second.id, "started") not in kinds


async def test_cancelling_a_queued_training_ends_its_run_too(db, settings: Settings) -> None:
    pet = await create_pet(db, "g1", "u1", "Thor", "cat")
    run_id = await insert_run(db, pet.id, {}, 10)
    training = await _submit(db, settings, "train", run_id=run_id)
    await jobs.request_cancel(db, training.id)
    run = await get_run(db, run_id)
    assert run.status == "cancelled" and run.finished_at is not None


async def test_events_flow_in_order_and_a_late_subscriber_reads_the_row(db, settings: Settings) -> None:
    job = await _submit(db, settings)
    other = await _submit(db, settings, user="u2")
    start = await jobs.last_event_position(db)
    claimed = await jobs.claim_next_job(db, "w1")
    assert claimed.id == job.id
    await jobs.set_progress(db, claimed.lease, 0.5, "step 15/30", {"step": 15, "total": 30})
    await jobs.finish_job(db, claimed.lease, "succeeded", {"generation_id": 7, "files": ["generations/ab/0.png"]})

    events = await jobs.events_after(db, start, job_ids=[job.id])
    assert [e.kind for e in events] == ["started", "progress", "finished"]
    assert events[0].data == {"worker": "w1", "attempt": 1}
    assert events[1].data == {"step": 15, "total": 30}
    assert events[2].data["files"] == ["generations/ab/0.png"]
    assert await jobs.events_after(db, events[-1].position, job_ids=[job.id]) == []
    assert await jobs.last_event_position(db) == events[-1].position
    assert [e.kind for e in await jobs.events_after(db, jobs.START, job_ids=[other.id])] == ["queued"]
    assert await jobs.events_after(db, jobs.START, job_ids=[]) == []
    # A reader that pages through everything sees each event once, in order.
    paged, position = [], jobs.START
    while batch := await jobs.events_after(db, position, limit=2):
        paged += batch
        position = batch[-1].position
    assert [e.id for e in paged] == sorted(e.id for e in paged) and len(paged) == 5

    late = await jobs.get_job(db, job.id)
    assert late.status == "succeeded" and late.progress == 1.0 and late.result["generation_id"] == 7
    assert late.ended and late.started_at is not None and late.finished_at is not None
    assert await jobs.estimate_wait_s(db, job.id) is None
    with pytest.raises(ValueError, match="unknown job event kind"):
        await jobs.record_event(db, job.id, "exploded")


async def test_eta_comes_from_recent_durations_of_that_kind(db, settings: Settings) -> None:
    settings = dataclasses.replace(settings, max_queued_generations_per_user=10)
    assert await jobs.average_duration_s(db, "generate") == 30.0  # the kind's guess before any finished
    for _ in range(2):
        job = await _submit(db, settings)
        await jobs.claim_next_job(db, "w1")
        await db.execute(
            update(jobs_table).where(jobs_table.c.id == job.id).values(
                started_at="2026-01-01T00:00:00.000Z", finished_at="2026-01-01T00:00:10.000Z", status="succeeded"
            )
        )
    assert await jobs.average_duration_s(db, "generate") == pytest.approx(10.0, abs=0.01)
    first = await _submit(db, settings, user="x")
    second = await _submit(db, settings, user="y")
    assert await jobs.estimate_wait_s(db, first.id) == pytest.approx(10.0, abs=0.01)
    assert await jobs.estimate_wait_s(db, second.id) == pytest.approx(20.0, abs=0.01)

    # A running training's own ETA counts for a training queued behind it, not for generations.
    training = await _submit(db, settings, "train", user="t")
    claimed = await jobs.claim_next_job(db, "w1", kinds=("train",))
    assert claimed.id == training.id
    await jobs.set_progress(db, claimed.lease, 0.2, "step 2/10", {"step": 2, "total": 10, "eta_s": 100.0})
    assert await jobs.estimate_wait_s(db, training.id) == pytest.approx(100.0)
    assert await jobs.estimate_wait_s(db, first.id) == pytest.approx(10.0, abs=0.01)
    behind = await _submit(db, settings, "train", user="t2")
    # 100 s left of the running training, plus the two generations ahead, plus its own guess (600 s).
    assert await jobs.estimate_wait_s(db, behind.id) == pytest.approx(100.0 + 20.0 + 600.0, abs=0.1)


# --- several processes at once ------------------------------------------------------------


async def test_what_a_front_end_writes_with_a_job_is_queued_with_it_or_not_at_all(
    pools, db, settings: Settings
) -> None:
    """A worker may claim a job the moment it is committed: what the bot writes about it (where it
    is shown) comes in the same transaction, so another process never sees the job without it,
    and a job whose row could not be written is not queued at all."""
    worker = pools[0]
    seen_meanwhile: list[tuple[jobs.Job | None, bool]] = []

    async def shown(tx: Queries, job_id: int) -> None:
        await add_discord_job(tx, job_id, "g1", "channel", "u1")
        seen_meanwhile.append((await jobs.get_job(worker, job_id), await jobs.has_queued(worker)))

    job = await jobs.submit_job(db, settings, "generate", "g1", "u1", {"request": {}}, also=shown)
    assert seen_meanwhile == [(None, False)]
    claimed = await jobs.claim_next_job(worker, "w1")
    assert claimed is not None and claimed.id == job.id
    assert (await get_discord_job(worker, job.id)).channel_id == "channel"

    async def unwritable(tx: Queries, job_id: int) -> None:
        raise RuntimeError("the row could not be written")

    with pytest.raises(RuntimeError):
        await jobs.submit_job(db, settings, "generate", "g1", "u1", {"request": {}}, also=unwritable)
    assert not await jobs.has_queued(worker)
    assert [listed.id for listed in await jobs.list_jobs(worker, active_only=False)] == [claimed.id]
    assert {event.job_id for event in await jobs.events_after(worker, jobs.START)} == {claimed.id}


async def test_a_training_that_could_not_be_queued_leaves_its_pet_free_to_train(
    db, store: FileStore, settings: Settings
) -> None:
    """Whatever stops a training's job from being queued (here the bot's row), its run is cancelled
    with the reason: a waiting run without a job would answer "already training" for good."""
    pet = await pet_with_photos(db, store)

    async def unwritable(tx: Queries, job_id: int) -> None:
        raise RuntimeError("the row could not be written")

    with pytest.raises(RuntimeError):
        await queue_training(db, store, settings, pet, TrainingParams(steps=2, resolution=64), "owner", also=unwritable)
    (refused,) = await list_runs(db, pet.id)
    assert refused.status == "cancelled" and "the row could not be written" in (refused.error or "")
    job = await queue_training(db, store, settings, pet, TrainingParams(steps=2, resolution=64), "owner")
    assert job.run_id != refused.id and (await get_run(db, job.run_id)).status == "queued"


async def test_two_processes_submitting_at_once_never_pass_the_limit(pools, settings: Settings) -> None:
    settings = dataclasses.replace(settings, max_queued_trainings_per_user=1)
    first, second = pools[0], pools[1]
    for round_number in range(5):
        member = f"member-{round_number}"
        outcomes = await asyncio.gather(
            _submit(first, settings, "train", user=member), _submit(second, settings, "train", user=member),
            return_exceptions=True,
        )
        accepted = [o for o in outcomes if isinstance(o, jobs.Job)]
        refused = [o for o in outcomes if isinstance(o, jobs.QueueLimitReached)]
        assert len(accepted) == 1 and len(refused) == 1, outcomes
        assert "the limit is 1" in str(refused[0])
    assert len(await jobs.list_jobs(first)) == 5


async def test_many_workers_claiming_at_once_take_each_job_exactly_once(pools, db, settings: Settings) -> None:
    settings = dataclasses.replace(settings, max_queued_generations_per_user=50)
    submitted = {(await _submit(db, settings, user=f"u{i}")).id for i in range(20)}

    async def drain(database: Database, name: str) -> list[int]:
        taken = []
        while (job := await jobs.claim_next_job(database, name)) is not None:
            assert job.worker_id == name and job.attempts == 1
            taken.append(job.id)
            await asyncio.sleep(0)
        return taken

    taken = await asyncio.gather(*(drain(pool, f"w{i}") for i, pool in enumerate(pools)))
    everything = [job_id for part in taken for job_id in part]
    assert sorted(everything) == sorted(submitted)  # none twice, none left out
    started = [e for e in await jobs.events_after(db, jobs.START) if e.kind == "started"]
    assert sorted(e.job_id for e in started) == sorted(submitted)
    for worker, part in enumerate(taken):
        for job_id in part:
            assert (await jobs.get_job(db, job_id)).worker_id == f"w{worker}"


async def test_events_committed_out_of_id_order_are_all_seen_by_a_polling_reader(
    pools, db, settings: Settings
) -> None:
    job = await _submit(db, settings)
    writer_a, writer_b, reader = pools[0], pools[1], pools[2]
    position = await jobs.last_event_position(reader)
    seen: list[jobs.JobEvent] = []

    async def poll() -> None:
        nonlocal position
        for event in await jobs.events_after(reader, position):
            seen.append(event)
            position = event.position

    a_inserted, b_committed = asyncio.Event(), asyncio.Event()
    ids: dict[str, int] = {}
    commits: list[str] = []

    async def first_to_insert_last_to_commit() -> None:
        async with writer_a.transaction() as tx:
            ids["a"] = await jobs.record_event(tx, job.id, "progress", {"writer": "a"})
            a_inserted.set()
            # PostgreSQL: B commits meanwhile. SQLite has one writer at a time, so B waits for
            # this commit instead; A then gives up waiting and commits first.
            try:
                await asyncio.wait_for(b_committed.wait(), 10 if db.dialect == "postgresql" else 0.3)
            except TimeoutError:
                pass
            await poll()  # a reader polling while A is still open
        commits.append("a")

    async def second_to_insert_first_to_commit() -> None:
        await a_inserted.wait()
        async with writer_b.transaction() as tx:
            ids["b"] = await jobs.record_event(tx, job.id, "progress", {"writer": "b"})
        commits.append("b")
        b_committed.set()
        await poll()  # a reader polling after B's commit (before A's, on PostgreSQL)

    await asyncio.gather(first_to_insert_last_to_commit(), second_to_insert_first_to_commit())
    await poll()
    assert ids["a"] < ids["b"]
    if db.dialect == "postgresql":
        assert commits == ["b", "a"]  # the smaller id really did commit last
    assert sorted(e.data["writer"] for e in seen) == ["a", "b"]  # none skipped, none twice
    assert [e.id for e in seen].count(ids["a"]) == 1 and [e.id for e in seen].count(ids["b"]) == 1
    assert await jobs.events_after(reader, position) == []
    assert await jobs.last_event_position(reader) == position


# --- leases, fencing and recovery ---------------------------------------------------------


async def test_a_worker_that_lost_its_job_changes_nothing(db, settings: Settings) -> None:
    pet = await create_pet(db, "g1", "u1", "Thor", "cat")
    job = await _submit(db, settings)
    stale = (await jobs.claim_next_job(db, "w1")).lease
    requeued = await jobs.requeue_or_fail(db, stale, max_attempts=3, why="the worker went silent")
    assert requeued.status == "queued" and requeued.worker_id is None and requeued.error.startswith("requeued")
    current = (await jobs.claim_next_job(db, "w2")).lease
    assert current == jobs.JobLease(job.id, "w2", 2)
    await jobs.set_progress(db, current, 0.25, "step 1/4", {"step": 1, "total": 4})
    before_row, before_events = await jobs.get_job(db, job.id), await all_events(db, job.id)

    # The first worker wakes up and carries on as if the job were still its own.
    with pytest.raises(jobs.LeaseLost, match=f"job #{job.id} attempt 1 is no longer w1's"):
        await jobs.set_progress(db, stale, 0.9, "step 3/4", {"step": 3, "total": 4})
    with pytest.raises(jobs.LeaseLost):
        await jobs.record_job_event(db, stale, "checkpoint", {"step": 3})
    with pytest.raises(jobs.LeaseLost):
        await jobs.set_links(db, stale, generation_id=None, run_id=None)
    with pytest.raises(jobs.LeaseLost):
        await jobs.finish_job(db, stale, "succeeded", {"files": ["generations/x/0.png"]})
    fenced = FencedDatabase(db, stale)
    with pytest.raises(jobs.LeaseLost):
        await fenced.execute(update(pets).where(pets.c.id == pet.id).values(name="Hacked"))
    with pytest.raises(jobs.LeaseLost):
        async with fenced.transaction() as tx:
            await tx.execute(update(pets).where(pets.c.id == pet.id).values(name="Hacked"))
    # Reads through the fence still work.
    assert await fenced.scalar(select(pets.c.name).where(pets.c.id == pet.id)) == "Thor"
    # Its heartbeat no longer renews anything.
    assert await jobs.heartbeat(db, "w1", [job.id]) == set()

    assert await jobs.get_job(db, job.id) == before_row
    assert await all_events(db, job.id) == before_events
    assert (await get_pet(db, pet.id)).name == "Thor"

    # The worker that holds the job now writes normally, fenced or not.
    assert await jobs.heartbeat(db, "w2", [job.id]) == {job.id}
    await FencedDatabase(db, current).execute(update(pets).where(pets.c.id == pet.id).values(name="Thor II"))
    assert (await get_pet(db, pet.id)).name == "Thor II"
    done = await jobs.finish_job(db, current, "succeeded", {"files": []})
    assert done.status == "succeeded" and done.attempts == 2
    with pytest.raises(jobs.LeaseLost):  # finishing twice is refused too
        await jobs.finish_job(db, current, "failed", error="late")
    assert (await jobs.get_job(db, job.id)).status == "succeeded"
    with pytest.raises(ValueError, match="not 'running'"):
        await jobs.finish_job(db, current, "running")


async def test_a_job_whose_worker_beats_is_left_alone_a_silent_one_is_requeued(db, settings: Settings) -> None:
    job = await _submit(db, settings)
    lease = (await jobs.claim_next_job(db, "w1")).lease
    [running] = await jobs.running_jobs(db)
    assert running.job.id == job.id and running.job.worker_id == "w1"
    assert running.silent_s is not None and 0 <= running.silent_s < 5

    # The heartbeat is fresh on the database's clock: the sweeper leaves the job alone.
    kept = await jobs.requeue_or_fail(db, lease, max_attempts=3, why="the worker went silent", silent_for_s=60)
    assert kept.status == "running" and kept.worker_id == "w1" and kept.attempts == 1

    # Ten minutes of silence (on the database's clock) and it goes back to the queue.
    await db.execute(
        update(jobs_table).where(jobs_table.c.id == job.id).values(heartbeat_at=utc_now_minus(600))
    )
    [running] = await jobs.running_jobs(db)
    assert running.silent_s == pytest.approx(600, abs=5)
    requeued = await jobs.requeue_or_fail(db, lease, max_attempts=3, why="the worker went silent", silent_for_s=60)
    assert requeued.status == "queued" and requeued.worker_id is None
    assert await jobs.running_jobs(db) == []
    last = (await all_events(db, job.id))[-1]
    assert last.kind == "queued" and last.data == {"position": 1, "requeued": "the worker went silent"}

    # A beating worker renews its lease: the silence starts again from now.
    lease = (await jobs.claim_next_job(db, "w2")).lease
    await db.execute(update(jobs_table).where(jobs_table.c.id == job.id).values(heartbeat_at=utc_now_minus(600)))
    assert await jobs.heartbeat(db, "w2", [job.id]) == {job.id}
    [running] = await jobs.running_jobs(db)
    assert running.silent_s < 5
    assert (await jobs.requeue_or_fail(db, lease, 3, "silent", silent_for_s=60)).status == "running"

    # A claim the worker does not know of (the answer to its commit was lost) is not renewed,
    # so the sweep gives that job back.
    other = await _submit(db, settings, user="u2")
    unknown = (await jobs.claim_next_job(db, "w2")).lease
    assert unknown.job_id == other.id
    await db.execute(update(jobs_table).where(jobs_table.c.id == other.id).values(heartbeat_at=utc_now_minus(600)))
    assert await jobs.heartbeat(db, "w2", [job.id]) == {job.id}
    assert (await jobs.requeue_or_fail(db, unknown, 3, "silent", silent_for_s=60)).status == "queued"
    assert (await jobs.get_job(db, job.id)).status == "running"


async def test_a_worker_frozen_inside_a_transaction_does_not_block_the_takeover(
    pools, db, settings: Settings, mode: str
) -> None:
    """A worker frozen (SIGSTOP, a suspended VM) in the middle of a write holds the job row's lock;
    PostgreSQL ends that session after a few seconds, so the sweep still requeues the job and
    other writers (and event readers) go on. SQLite runs on one host, where this cannot happen
    to one process alone."""
    if mode == "embedded":
        pytest.skip("one SQLite writer at a time on one host: a frozen process freezes the host's queue too")
    job = await _submit(db, settings)
    frozen, sweeper = pools[0], pools[1]
    lease = (await jobs.claim_next_job(frozen, "w1")).lease
    stuck = frozen.transaction()
    tx = await stuck.__aenter__()
    await jobs.check_lease(tx, lease)  # holds the row lock, then goes quiet inside the transaction
    await sweeper.execute(update(jobs_table).where(jobs_table.c.id == job.id).values(heartbeat_at=utc_now_minus(600)))
    started = time.monotonic()
    requeued = await asyncio.wait_for(jobs.requeue_or_fail(sweeper, lease, 3, "silent", silent_for_s=60), 30)
    assert requeued.status == "queued" and time.monotonic() - started < 15
    with pytest.raises(DBAPIError):
        await tx.execute(select(jobs_table.c.id))  # woken up: its session was ended by the server
    with pytest.raises(PendingRollbackError):  # and its transaction with it
        await stuck.__aexit__(None, None, None)
    assert [e.kind for e in await all_events(sweeper, job.id)][-1] == "queued"


async def test_a_stopped_worker_hands_its_job_back_without_using_an_attempt(db, settings: Settings) -> None:
    job = await _submit(db, settings)
    for _ in range(5):  # more often than max_attempts: stopping a worker is never the job's fault
        claimed = await jobs.claim_next_job(db, "w1")
        assert claimed.id == job.id and claimed.attempts == 1
        released = await jobs.release_job(db, claimed.lease)
        assert released.status == "queued" and released.attempts == 0 and released.worker_id is None
        assert await jobs.queue_position(db, job.id) == 1
    last = (await all_events(db, job.id))[-1]
    assert last.kind == "queued" and last.data["requeued"] == "the worker was stopped"
    # A stale release (the job is someone else's now) does nothing.
    stale = (await jobs.claim_next_job(db, "w1")).lease
    await jobs.requeue_or_fail(db, stale, 3, "silent")
    mine = await jobs.claim_next_job(db, "w2")
    assert (await jobs.release_job(db, stale)).worker_id == "w2"
    assert (await jobs.get_job(db, job.id)).status == "running" and mine.attempts == 2


async def test_job_of_a_dead_worker_is_requeued_then_failed_after_max_attempts(db, settings: Settings) -> None:
    job = await _submit(db, settings)
    for attempt in (1, 2):
        claimed = await jobs.claim_next_job(db, f"w{attempt}")
        assert claimed.attempts == attempt
        requeued = await jobs.requeue_or_fail(db, claimed.lease, max_attempts=3, why="the worker died")
        assert requeued.status == "queued" and await jobs.queue_position(db, job.id) == 1
    previous = claimed.lease
    claimed = await jobs.claim_next_job(db, "w3")
    # Another worker's stale view does nothing.
    assert (await jobs.requeue_or_fail(db, previous, 3, "x")).status == "running"
    failed = await jobs.requeue_or_fail(db, claimed.lease, max_attempts=3, why="the worker died")
    assert failed.status == "failed" and failed.finished_at is not None
    assert failed.error.startswith("gave up after 3 tries: the worker died each time.")
    assert "try smaller settings" in failed.error
    last = (await all_events(db, job.id))[-1]
    assert last.kind == "failed" and last.data == {"error": failed.error}
    assert await jobs.claim_next_job(db, "w4") is None


async def test_a_job_cancelled_while_its_worker_was_silent_ends_cancelled(db, settings: Settings) -> None:
    job = await _submit(db, settings)
    lease = (await jobs.claim_next_job(db, "w1")).lease
    await jobs.request_cancel(db, job.id)
    ended = await jobs.requeue_or_fail(db, lease, 3, "the worker died")
    assert ended.status == "cancelled" and ended.finished_at is not None
    assert (await all_events(db, job.id))[-1].data == {"while": "running", "reason": "the worker died"}


async def test_events_of_a_deleted_job_go_with_it(db, settings: Settings) -> None:
    job = await _submit(db, settings)
    await db.execute(delete(jobs_table).where(jobs_table.c.id == job.id))
    assert await db.scalar(select(func.count()).select_from(job_events)) == 0
