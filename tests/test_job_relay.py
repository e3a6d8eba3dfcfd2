"""The bot's job relay against a real database: every event reaches its listener once, in
order, whatever was deleted before it and whatever a listener did wrong.

The relay runs as in the bot (its own task, polling); the bot around it is reduced to what
the relay uses: the database, the cogs' listeners and the job messages' flush.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import delete

from bot.job_relay import JobRelay
from config.settings import Settings
from engine.usecases.generation.request import GenerationRequest
from engine.usecases.queueing import queue_generation
from storage import jobs
from storage.db import Database, open_database
from storage.discord_posts import add_discord_job, relay_position, set_relay_position, set_status_message, shown_in
from storage.jobs import EventPosition
from storage.schema import jobs as job_rows

pytestmark = pytest.mark.both_modes


class Listener:
    """A cog that records each event it is given; `failing` events raise (a file store error)."""

    def __init__(self) -> None:
        self.delivered: list[tuple[int, str]] = []
        self.attempts: dict[tuple[int, str], int] = {}
        self.failing: set[str] = set()

    def get_listeners(self) -> list[tuple[str, object]]:
        return [(f"on_pawtrait_generate_{kind}", self.on_event) for kind in ("queued", "started", "progress", "finished")]

    async def on_event(self, update) -> None:
        key = (update.job.id, update.event.kind)
        self.attempts[key] = self.attempts.get(key, 0) + 1
        if update.event.kind in self.failing:
            raise OSError("the file store is unreachable")
        self.delivered.append(key)


class Relayed:
    """A relay running as the bot runs it, with a listener that records what reached it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.listener = Listener()

        async def ready() -> None:
            return None

        async def flushed() -> None:
            return None

        bot = SimpleNamespace(
            db=db, cogs={"generate": self.listener}, wait_until_ready=ready,
            job_messages=SimpleNamespace(flush_due=flushed),
        )
        self.relay = JobRelay(bot, interval_s=0.02)  # type: ignore[arg-type]

    async def __aenter__(self) -> Relayed:
        await self.relay.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.relay.stop()

    async def until(self, expected: list[tuple[int, str]], idle_ticks: int = 10) -> None:
        """Wait for `expected` to be delivered, then a few more ticks for anything delivered twice."""
        for _ in range(500):
            if set(expected) <= set(self.listener.delivered):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(idle_ticks * 0.02)
        assert self.listener.delivered == expected


async def shown_job(db: Database, tmp_path: Path, *kinds: str) -> int:
    """A painting asked for from Discord (its 'queued' event) and then `kinds` events."""
    job = await jobs.submit_job(db, Settings(data_dir=tmp_path), "generate", "g", "u", {"request": {}})
    await add_discord_job(db, job.id, "g", "channel", "u", status_message_id="message-1")
    for kind in kinds:
        await jobs.record_event(db, job.id, kind)
    return job.id


async def test_a_failing_event_is_tried_again_then_skipped_and_no_other_event_is_delivered_twice(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await set_relay_position(db, jobs.START)
    job_id = await shown_job(db, tmp_path, "started", "progress", "finished")
    events = await jobs.events_after(db, jobs.START)
    async with Relayed(db) as relayed:
        relayed.listener.failing.add("progress")
        with caplog.at_level(logging.INFO, logger="bot.job_relay"):
            await relayed.until([(job_id, "queued"), (job_id, "started"), (job_id, "finished")])
    assert relayed.listener.attempts[(job_id, "progress")] == 3
    # The position stored is the one the relay holds: the last event, each handled once.
    assert await relay_position(db) == relayed.relay.position == events[-1].position
    [skipped] = [record for record in caplog.records if record.levelno >= logging.WARNING]
    progress = next(event for event in events if event.kind == "progress")
    assert f"skipped event {progress.id} (progress) of job {job_id}" in skipped.getMessage()


async def test_events_after_a_deletion_reach_discord(db: Database, tmp_path: Path) -> None:
    """/forget cascades away a pet's jobs with their events, the newest ones included."""
    await set_relay_position(db, jobs.START)
    first = await shown_job(db, tmp_path, "started")
    async with Relayed(db) as relayed:
        await relayed.until([(first, "queued"), (first, "started")])
    await db.execute(delete(job_rows).where(job_rows.c.id == first))
    second = await shown_job(db, tmp_path, "finished")
    async with Relayed(db) as relayed:
        await relayed.until([(second, "queued"), (second, "finished")])


async def test_a_relay_past_every_event_continues_from_the_newest_without_posting_again(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A restored backup or a truncated table: the stored position is past every event."""
    await set_relay_position(db, jobs.START)
    first = await shown_job(db, tmp_path)
    async with Relayed(db) as relayed:
        await relayed.until([(first, "queued")])
    await set_relay_position(db, EventPosition(2**40, 2**30))
    with caplog.at_level(logging.WARNING, logger="bot.job_relay"):
        async with Relayed(db) as relayed:
            await relayed.until([])  # nothing posted again
        second = await shown_job(db, tmp_path, "finished")
        async with Relayed(db) as relayed:
            await relayed.until([(second, "queued"), (second, "finished")])
    assert len([record for record in caplog.records if "before the relay's position" in record.getMessage()]) == 1


async def test_a_painting_finished_before_the_command_answers_still_reaches_discord(
    db: Database, settings: Settings
) -> None:
    """A worker (another process) may claim a painting the moment it is queued and finish it
    before the command that queued it has written anything more. Queued as `/imagine` queues it,
    the job comes with where it is shown: the relay waits for the command's answer instead of
    passing the events by, then shows every one of them, the pictures' too."""
    await set_relay_position(db, jobs.START)
    worker = await open_database(settings.database_url)
    try:
        async with Relayed(db) as relayed:
            job = await queue_generation(db, settings, GenerationRequest(prompt="a cat"), None, "g", "u",
                                         also=shown_in("g", "channel", "u"))
            claimed = await jobs.claim_next_job(worker, "w1")
            assert claimed is not None and claimed.id == job.id
            await jobs.finish_job(worker, claimed.lease, "succeeded")
            await relayed.until([])  # the command has not answered yet: held, not skipped
            await set_status_message(db, job.id, "message-1")  # the command's answer
            await relayed.until([(job.id, "queued"), (job.id, "started"), (job.id, "finished")])
    finally:
        await worker.close()
