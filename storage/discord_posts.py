"""SQL for where the bot shows each job in Discord, and how far its event relay has read.

Both survive a restart, so the relay continues editing the same status message from the
first event it had not handled yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite


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
    db: aiosqlite.Connection,
    job_id: int,
    guild_id: str,
    channel_id: str,
    requested_by: str,
    thread_id: str | None = None,
    status_message_id: str | None = None,
) -> DiscordJob:
    await db.execute(
        "INSERT OR REPLACE INTO discord_jobs (job_id, guild_id, channel_id, thread_id, status_message_id, requested_by) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (job_id, guild_id, channel_id, thread_id, status_message_id, requested_by),
    )
    return DiscordJob(job_id, guild_id, channel_id, thread_id, status_message_id, requested_by)


async def get_discord_job(db: aiosqlite.Connection, job_id: int) -> DiscordJob | None:
    async with db.execute(
        "SELECT job_id, guild_id, channel_id, thread_id, status_message_id, requested_by FROM discord_jobs WHERE job_id = ?",
        (job_id,),
    ) as cursor:
        row = await cursor.fetchone()
    return DiscordJob(**dict(row)) if row is not None else None


async def set_status_message(db: aiosqlite.Connection, job_id: int, message_id: str) -> None:
    await db.execute("UPDATE discord_jobs SET status_message_id = ? WHERE job_id = ?", (message_id, job_id))


async def relay_position(db: aiosqlite.Connection) -> int | None:
    """The last event id the relay handled, or None before its first start."""
    async with db.execute("SELECT last_event_id FROM discord_relay WHERE id = 1") as cursor:
        row = await cursor.fetchone()
    return None if row is None else int(row[0])


async def set_relay_position(db: aiosqlite.Connection, event_id: int) -> None:
    await db.execute(
        "INSERT INTO discord_relay (id, last_event_id) VALUES (1, ?) "
        "ON CONFLICT (id) DO UPDATE SET last_event_id = excluded.last_event_id",
        (event_id,),
    )


async def voted_steps(db: aiosqlite.Connection, run_id: int, user_id: str, emoji: str) -> set[int]:
    """Checkpoint steps of a run that one member voted for (on an image of that step)."""
    async with db.execute(
        "SELECT DISTINCT vi.step FROM votes v JOIN validation_images vi ON vi.id = v.validation_image_id "
        "WHERE vi.run_id = ? AND v.user_id = ? AND v.emoji = ?",
        (run_id, user_id, emoji),
    ) as cursor:
        return {int(row[0]) for row in await cursor.fetchall()}


async def set_generation_message(db: aiosqlite.Connection, generation_id: int, message_id: str) -> None:
    """Remember the message that shows a generation's images (its buttons act on that row)."""
    await db.execute("UPDATE generations SET message_id = ? WHERE id = ?", (message_id, generation_id))


async def job_for_generation(db: aiosqlite.Connection, generation_id: int) -> int | None:
    """The job that produced a generation: its payload holds the full request for a reroll."""
    async with db.execute("SELECT id FROM jobs WHERE generation_id = ? ORDER BY id LIMIT 1", (generation_id,)) as cursor:
        row = await cursor.fetchone()
    return None if row is None else int(row[0])
