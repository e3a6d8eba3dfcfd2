"""Turning job events (written by the GPU workers) into bot events for the cog that owns them.

The relay polls `storage.jobs.events_after` about once a second and, for each event of a
job started from Discord, calls the listeners named `on_pawtrait_<kind>_<event>` (e.g.
`on_pawtrait_train_validation` in the training cog, `on_pawtrait_generate_finished` in the
imagine cog) with a `JobUpdate`, as RoboDanny's reminders dispatch `<event>_timer_complete`.
Unlike `bot.dispatch`, which runs listeners as loose tasks, it waits for them: a job's
messages (the last validation images, then the finish message) appear in event order.

Its read position and each job's message ids live in the database, so after a restart it
continues with the first event it had not handled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord

from storage.db import Queries
from storage.discord_posts import DiscordJob, get_discord_job, relay_position, set_relay_position
from storage.jobs import EventPosition, Job, JobEvent, events_after, get_job, last_event_position

if TYPE_CHECKING:
    from bot.app import PawtraitBot

log = logging.getLogger(__name__)

# A job's status message is posted right after its job is queued; wait this long for it
# before showing updates as new messages.
REPLY_GRACE_S = 10.0


@dataclass(frozen=True)
class JobUpdate:
    """What a cog's `on_pawtrait_<kind>_<event>` listener receives."""

    target: DiscordJob  # where the job is shown
    job: Job
    event: JobEvent


class JobRelay:
    def __init__(self, bot: PawtraitBot, interval_s: float = 1.0) -> None:
        self.bot = bot
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._waiting_since: dict[int, float] = {}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pawtrait-job-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping: its errors were logged as they happened
                pass
            self._task = None

    async def _run(self) -> None:
        await self.bot.wait_until_ready()
        db = self.bot.db
        position = await relay_position(db)
        if position is None:  # first start ever: nothing old to replay
            position = await last_event_position(db)
            await set_relay_position(db, position)
        while True:
            try:
                position = await self.tick(db, position)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("relaying job events failed; retrying")
            await asyncio.sleep(self.interval_s)

    async def tick(self, db: Queries, position: EventPosition) -> EventPosition:
        """Deliver the events after `position`; returns the new position."""
        for event in await events_after(db, position):
            target = await get_discord_job(db, event.job_id)
            job = await get_job(db, event.job_id) if target is not None else None
            if target is not None and job is not None:
                if self._hold(target):
                    break
                try:
                    await self.deliver(f"pawtrait_{job.kind}_{event.kind}", JobUpdate(target, job, event))
                except discord.HTTPException as error:
                    log.warning("could not show event %s of job %s in Discord: %s", event.kind, event.job_id, error)
            position = event.position
            await set_relay_position(db, position)
        await self.bot.job_messages.flush_due()
        return position

    async def deliver(self, name: str, update: JobUpdate) -> None:
        """Await every cog listener of the bot event `name`, in the order the cogs were loaded."""
        for cog in self.bot.cogs.values():
            for event_name, listener in cog.get_listeners():
                if event_name == f"on_{name}":
                    await listener(update)

    def _hold(self, target: DiscordJob) -> bool:
        """Wait (briefly) for the job's status message to exist: the command that queued the job
        posts it right after submitting, and the worker may be quicker."""
        if target.status_message_id is not None:
            self._waiting_since.pop(target.job_id, None)
            return False
        first = self._waiting_since.setdefault(target.job_id, time.monotonic())
        return time.monotonic() - first < REPLY_GRACE_S
