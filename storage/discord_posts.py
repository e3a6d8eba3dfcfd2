"""SQL for where the bot shows each job in Discord, and how far its event relay has read.

Both survive a restart, so the relay continues editing the same status message from the
first event it had not handled yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update

from storage.db import Queries
from storage.dialects import upsert
from storage.jobs import EventPosition, WithJob
from storage.schema import discord_jobs, discord_relay, generations, jobs, validation_images, votes


@dataclass(frozen=True)
class DiscordJob:
    job_id: int
    guild_id: str
    channel_id: str
    thread_id: str | None
    status_message_id: str | None
    requested_by: str

    @property
    def post_channel_id(self) -> str:
        """Where updates go: the training's thread when it has one, else the channel."""
        return self.thread_id or self.channel_id


async def add_discord_job(
    db: Queries,
    job_id: int,
    guild_id: str,
    channel_id: str,
    requested_by: str,
    thread_id: str | None = None,
    status_message_id: str | None = None,
) -> DiscordJob:
    """Remember where a job is shown; a second call for the same job replaces every value."""
    await db.execute(upsert(db.dialect, discord_jobs, ["job_id"], dict(
        job_id=job_id, guild_id=guild_id, channel_id=channel_id, thread_id=thread_id,
        status_message_id=status_message_id, requested_by=requested_by,
    )))
    return DiscordJob(job_id, guild_id, channel_id, thread_id, status_message_id, requested_by)


def shown_in(guild_id: str, channel_id: str, requested_by: str) -> WithJob:
    """`add_discord_job` for a job about to be queued, to pass as its submit's `also`: the row is
    written in the job's own transaction, so the relay never reads a worker's early events (or,
    for a quick job, its finished one) before it knows the job was asked for from Discord."""

    async def add(db: Queries, job_id: int) -> None:
        await add_discord_job(db, job_id, guild_id, channel_id, requested_by)

    return add


async def get_discord_job(db: Queries, job_id: int) -> DiscordJob | None:
    row = await db.one(select(discord_jobs).where(discord_jobs.c.job_id == job_id))
    return DiscordJob(**row) if row is not None else None


async def set_status_message(db: Queries, job_id: int, message_id: str) -> None:
    await db.execute(update(discord_jobs).where(discord_jobs.c.job_id == job_id).values(status_message_id=message_id))


async def relay_position(db: Queries) -> EventPosition | None:
    """The last event position (tx, id) the relay handled, or None before its first start."""
    row = await db.one(
        select(discord_relay.c.last_event_tx, discord_relay.c.last_event_id).where(discord_relay.c.id == 1)
    )
    return None if row is None else EventPosition(int(row["last_event_tx"]), int(row["last_event_id"]))


async def set_relay_position(db: Queries, position: EventPosition) -> None:
    values = dict(id=1, last_event_tx=position.tx, last_event_id=position.id)
    await db.execute(upsert(db.dialect, discord_relay, ["id"], values))


async def voted_steps(db: Queries, run_id: int, user_id: str, emoji: str) -> set[int]:
    """Checkpoint steps of a run that one member voted for (on an image of that step)."""
    rows = await db.all(
        select(validation_images.c.step)
        .distinct()
        .select_from(votes.join(validation_images, validation_images.c.id == votes.c.validation_image_id))
        .where(validation_images.c.run_id == run_id, votes.c.user_id == user_id, votes.c.emoji == emoji)
    )
    return {int(row["step"]) for row in rows}


async def set_generation_message(db: Queries, generation_id: int, message_id: str) -> None:
    """Remember the message that shows a generation's images (its buttons act on that row)."""
    await db.execute(update(generations).where(generations.c.id == generation_id).values(message_id=message_id))


async def set_gallery_message(db: Queries, generation_id: int, channel_id: str | None, message_id: str | None) -> None:
    """Remember (or, with None, forget) the gallery copy of a generation, so 🗑 can remove it too."""
    await db.execute(
        update(generations).where(generations.c.id == generation_id)
        .values(gallery_channel_id=channel_id, gallery_message_id=message_id)
    )


async def job_for_generation(db: Queries, generation_id: int) -> int | None:
    """The job that produced a generation: its payload holds the full request for a reroll."""
    job_id = await db.scalar(
        select(jobs.c.id).where(jobs.c.generation_id == generation_id).order_by(jobs.c.id).limit(1)
    )
    return None if job_id is None else int(job_id)
