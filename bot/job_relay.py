"""Turning job events (written by the GPU workers) into bot events for the cog that owns them.

The relay polls `storage.jobs.events_after` about once a second and, for each event of a
job started from Discord, reads it through its job kind's contract (engine.usecases.jobs)
and calls the listeners its event class names for that kind (`Event.listener`:
`on_pawtrait_train_validation` in the training cog, `on_pawtrait_generate_finished` in the
imagine cog) with a `JobUpdate`, as RoboDanny's reminders dispatch `<event>_timer_complete`.
Unlike `bot.dispatch`, which runs listeners as loose tasks, it waits for them: a job's
messages (the last validation images, then the finish message) appear in event order.

Its read position and each job's message ids live in the database, so after a restart it
continues with the first event it had not handled. The position moves past an event once it
was delivered, or given up on: an event whose listener fails (a file store error, a timeout)
is tried again on the next ticks, then skipped with one log line, so one bad event neither
stalls the relay nor makes it deliver the events before it twice (a second "is trained!" ping).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Generic, TypeVar

import discord

from engine.usecases.jobs.contract import Event
from engine.usecases.jobs.events import Failed
from engine.usecases.jobs.registry import job_kind
from storage.db import Queries
from storage.discord_posts import DiscordJob, get_discord_job, relay_position, set_relay_position
from storage.jobs import EventPosition, Job, JobEvent, events_after, get_job, last_event_position

if TYPE_CHECKING:
    from bot.app import PawtraitBot

log = logging.getLogger(__name__)

# A job's status message is posted right after its job is queued; wait this long for it
# before showing updates as new messages.
REPLY_GRACE_S = 10.0
# How many ticks in a row an event's listener may fail before the event is skipped.
DELIVERY_ATTEMPTS = 3

E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class JobUpdate(Generic[E]):
    """What a cog's `on_pawtrait_<kind>_<event>` listener receives: the event as stored, and as
    its kind's contract reads it (`happened`, e.g. a Progress with its step)."""

    target: DiscordJob  # where the job is shown
    job: Job
    event: JobEvent

    @cached_property
    def happened(self) -> E:
        """The event's typed data; ContractError if it does not fit the job's kind."""
        return job_kind(self.job.kind).event_of(self.event)  # type: ignore[return-value]

    @property
    def listener(self) -> str:
        return type(self.happened).listener(self.job.kind)

    @property
    def why_failed(self) -> str:
        """A failed job's reason, for the member."""
        error = self.happened.error if isinstance(self.happened, Failed) else None
        return error or self.job.error or "no reason was given"


class JobRelay:
    def __init__(self, bot: PawtraitBot, interval_s: float = 1.0) -> None:
        self.bot = bot
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._waiting_since: dict[int, float] = {}
        self._failures: dict[EventPosition, int] = {}  # failed deliveries of the event at the position
        # The last event delivered or skipped, as stored: set by _run, moved by tick.
        self.position: EventPosition | None = None

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
        while self.position is None:
            try:
                self.position = await relay_position(db)
                if self.position is None:  # first start ever: nothing old to replay
                    self.position = await last_event_position(db)
                    await set_relay_position(db, self.position)
            except Exception:
                log.exception("reading the job relay's position failed; retrying")
                await asyncio.sleep(self.interval_s)
        while True:
            try:
                await self.tick(db)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("relaying job events failed; retrying")
            await asyncio.sleep(self.interval_s)

    async def tick(self, db: Queries) -> None:
        """Deliver the events after `self.position`, moving it and its stored copy past each one
        delivered or skipped (an error half way leaves both at the last such event)."""
        assert self.position is not None, "the relay's position is read when it starts"
        events = await events_after(db, self.position)
        if not events:
            await self._within_the_events(db, self.position)
        for event in events:
            # None: not asked for from Discord (the CLI). A command's job is queued with its row
            # (storage.discord_posts.shown_in), so no event of it comes before the row does.
            target = await get_discord_job(db, event.job_id)
            job = await get_job(db, event.job_id) if target is not None else None
            if target is not None and job is not None:
                if self._hold(target):
                    break
                if not await self._delivered(JobUpdate(target, job, event)):
                    break  # tried again on the next tick, from this event on
            await set_relay_position(db, event.position)
            self.position = event.position
        await self.bot.job_messages.flush_due()

    async def _delivered(self, update: JobUpdate) -> bool:
        """Deliver one event; False when it failed and is to be tried again later."""
        event = update.event
        try:
            await self.deliver(update.listener, update)
        except discord.HTTPException as error:  # Discord refused the message: it would refuse it again
            log.warning("could not show event %s of job %s in Discord: %s", event.kind, event.job_id, error)
        except Exception as error:  # any listener error: retried, then skipped, never fatal
            failures = self._failures.get(event.position, 0) + 1
            if failures < DELIVERY_ATTEMPTS:
                self._failures[event.position] = failures
                log.debug("event %s (%s) of job %s failed (%s); trying again", event.id, event.kind, event.job_id, error)
                return False
            log.error("skipped event %s (%s) of job %s after %d failed tries: %s", event.id, event.kind,
                      event.job_id, failures, error, exc_info=error)
        self._failures.pop(event.position, None)
        return True

    async def _within_the_events(self, db: Queries, position: EventPosition) -> None:
        """Move the position back to the newest event's when every event is before it.

        Events at or after the position were deleted (a restored backup, a truncated table, a
        database from before ids were never reused): new ones may come before it and would
        never be read. Every event left is one the relay already passed, so it continues from
        the newest of them and re-posts nothing.
        """
        latest = await last_event_position(db)
        if latest >= position:
            return
        log.warning("the job events end at %s, before the relay's position %s (restored or truncated); "
                    "continuing from there", tuple(latest), tuple(position))
        await set_relay_position(db, latest)
        self.position = latest

    async def deliver(self, name: str, update: JobUpdate) -> None:
        """Await every cog listener called `name`, in the order the cogs were loaded."""
        for cog in self.bot.cogs.values():
            for listener_name, listener in cog.get_listeners():
                if listener_name == name:
                    await listener(update)

    def _hold(self, target: DiscordJob) -> bool:
        """Wait (briefly) for the job's status message to exist: the command that queued the job
        posts it right after submitting, and the worker may be quicker."""
        if target.status_message_id is not None:
            self._waiting_since.pop(target.job_id, None)
            return False
        first = self._waiting_since.setdefault(target.job_id, time.monotonic())
        return time.monotonic() - first < REPLY_GRACE_S
