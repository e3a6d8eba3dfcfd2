"""SQL for what each Discord server configured (`/settings`) and who may imagine with a pet.

A server that never ran `/settings` gets the defaults, without a row.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite

WHO_MAY_TRAIN = ("everyone", "managers")


@dataclass(frozen=True)
class GuildSettings:
    guild_id: str
    gallery_channel_id: str | None = None
    vote_emoji: str = "⭐"
    who_may_train: str = "everyone"  # 'managers': only members with Manage Server start trainings
    max_steps: int = 2000


async def get_guild_settings(db: aiosqlite.Connection, guild_id: str) -> GuildSettings:
    async with db.execute(
        "SELECT guild_id, gallery_channel_id, vote_emoji, who_may_train, max_steps FROM guild_settings WHERE guild_id = ?",
        (guild_id,),
    ) as cursor:
        row = await cursor.fetchone()
    return GuildSettings(**dict(row)) if row is not None else GuildSettings(guild_id)


async def update_guild_settings(
    db: aiosqlite.Connection,
    guild_id: str,
    *,
    gallery_channel_id: str | None = None,
    vote_emoji: str | None = None,
    who_may_train: str | None = None,
    max_steps: int | None = None,
) -> GuildSettings:
    """Change the given values (None = keep); returns the settings now in force."""
    current = await get_guild_settings(db, guild_id)
    await db.execute(
        "INSERT INTO guild_settings (guild_id, gallery_channel_id, vote_emoji, who_may_train, max_steps) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (guild_id) DO UPDATE SET gallery_channel_id = excluded.gallery_channel_id, "
        "vote_emoji = excluded.vote_emoji, who_may_train = excluded.who_may_train, max_steps = excluded.max_steps",
        (
            guild_id,
            gallery_channel_id if gallery_channel_id is not None else current.gallery_channel_id,
            vote_emoji if vote_emoji is not None else current.vote_emoji,
            who_may_train if who_may_train is not None else current.who_may_train,
            max_steps if max_steps is not None else current.max_steps,
        ),
    )
    return await get_guild_settings(db, guild_id)


async def others_may_imagine(db: aiosqlite.Connection, pet_id: int) -> bool:
    async with db.execute("SELECT others_may_imagine FROM pet_sharing WHERE pet_id = ?", (pet_id,)) as cursor:
        row = await cursor.fetchone()
    return True if row is None else bool(row[0])


async def set_others_may_imagine(db: aiosqlite.Connection, pet_id: int, allowed: bool) -> None:
    await db.execute(
        "INSERT INTO pet_sharing (pet_id, others_may_imagine) VALUES (?, ?) "
        "ON CONFLICT (pet_id) DO UPDATE SET others_may_imagine = excluded.others_may_imagine",
        (pet_id, int(allowed)),
    )
