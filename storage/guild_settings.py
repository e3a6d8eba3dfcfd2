"""SQL for what each Discord server configured (`/settings`) and who may imagine with a pet.

A server that never ran `/settings` gets the defaults, without a row.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update

from storage.db import Queries
from storage.dialects import upsert
from storage.schema import guild_settings, pet_sharing

WHO_MAY_TRAIN = ("everyone", "managers")
# What happens to a picture the safety check flagged: 'standard' posts it only in an
# age-restricted channel, as a spoiler; 'strict' never posts it.
SAFETY = ("standard", "strict")


@dataclass(frozen=True)
class GuildSettings:
    guild_id: str
    gallery_channel_id: str | None = None
    vote_emoji: str = "⭐"
    who_may_train: str = "everyone"  # 'managers': only members with Manage Server start trainings
    max_steps: int = 2000
    mod_channel_id: str | None = None  # where 🚩 reports go; None: reports are only recorded
    safety: str = "standard"


async def get_guild_settings(db: Queries, guild_id: str) -> GuildSettings:
    row = await db.one(select(guild_settings).where(guild_settings.c.guild_id == guild_id))
    return GuildSettings(**row) if row is not None else GuildSettings(guild_id)


async def update_guild_settings(
    db: Queries,
    guild_id: str,
    *,
    gallery_channel_id: str | None = None,
    vote_emoji: str | None = None,
    who_may_train: str | None = None,
    max_steps: int | None = None,
    safety: str | None = None,
) -> GuildSettings:
    """Change the given values (None = keep); returns the settings now in force."""
    async with db.transaction() as tx:
        current = await get_guild_settings(tx, guild_id)
        await tx.execute(upsert(db.dialect, guild_settings, ["guild_id"], dict(
            guild_id=guild_id,
            gallery_channel_id=gallery_channel_id if gallery_channel_id is not None else current.gallery_channel_id,
            vote_emoji=vote_emoji if vote_emoji is not None else current.vote_emoji,
            who_may_train=who_may_train if who_may_train is not None else current.who_may_train,
            max_steps=max_steps if max_steps is not None else current.max_steps,
            safety=safety if safety is not None else current.safety,
        )))
        return await get_guild_settings(tx, guild_id)


async def set_mod_channel(db: Queries, guild_id: str, channel_id: str | None) -> GuildSettings:
    """Set (or, with None, clear) the moderators' channel; returns the settings now in force."""
    async with db.transaction() as tx:
        await update_guild_settings(tx, guild_id)  # the row exists from here on
        await tx.execute(
            update(guild_settings).where(guild_settings.c.guild_id == guild_id).values(mod_channel_id=channel_id)
        )
        return await get_guild_settings(tx, guild_id)


async def others_may_imagine(db: Queries, pet_id: int) -> bool:
    allowed = await db.scalar(select(pet_sharing.c.others_may_imagine).where(pet_sharing.c.pet_id == pet_id))
    return True if allowed is None else bool(allowed)


async def set_others_may_imagine(db: Queries, pet_id: int, allowed: bool) -> None:
    await db.execute(upsert(db.dialect, pet_sharing, ["pet_id"], dict(pet_id=pet_id, others_may_imagine=int(allowed))))
