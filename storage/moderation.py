"""SQL for a server's moderation settings: its block words and its denied members."""

from __future__ import annotations

from sqlalchemy import delete, select

from storage.db import Queries
from storage.dialects import insert_for, utc_now
from storage.schema import block_words, denied_members

MAX_BLOCK_WORDS = 200  # a server's list stays short enough to list in one Discord message or two


class TooManyBlockWords(ValueError):
    """The server's list is full; the message says what to do."""


async def add_block_word(db: Queries, guild_id: str, word: str, added_by: str) -> bool:
    """Add a word (kept as typed, compared without case); False when it was on the list already."""
    word = " ".join(word.split())
    async with db.transaction() as tx:
        words = await list_block_words(tx, guild_id)
        if word.lower() in (known.lower() for known in words):
            return False
        if len(words) >= MAX_BLOCK_WORDS:
            raise TooManyBlockWords(
                f"This server already blocks {MAX_BLOCK_WORDS} words, the most it can: remove some first."
            )
        statement = insert_for(db.dialect, block_words).values(
            guild_id=guild_id, word=word, added_by=added_by, created_at=utc_now()
        )
        await tx.execute(statement.on_conflict_do_nothing())
        return True


async def remove_block_word(db: Queries, guild_id: str, word: str) -> bool:
    """Remove a word (any case); False when it was not on the list."""
    word = " ".join(word.split()).lower()
    found = [known for known in await list_block_words(db, guild_id) if known.lower() == word]
    for known in found:
        await db.execute(delete(block_words).where(block_words.c.guild_id == guild_id, block_words.c.word == known))
    return bool(found)


async def list_block_words(db: Queries, guild_id: str) -> list[str]:
    rows = await db.all(select(block_words.c.word).where(block_words.c.guild_id == guild_id).order_by(block_words.c.word))
    return [row["word"] for row in rows]


async def deny_member(db: Queries, guild_id: str, user_id: str, denied_by: str) -> None:
    statement = insert_for(db.dialect, denied_members).values(
        guild_id=guild_id, user_id=user_id, denied_by=denied_by, created_at=utc_now()
    )
    await db.execute(statement.on_conflict_do_nothing())


async def allow_member(db: Queries, guild_id: str, user_id: str) -> bool:
    """Lift a denial; False when the member was not denied."""
    result = await db.execute(
        delete(denied_members).where(denied_members.c.guild_id == guild_id, denied_members.c.user_id == user_id)
    )
    return result.rowcount > 0


async def is_denied(db: Queries, guild_id: str, user_id: str) -> bool:
    found = await db.scalar(
        select(denied_members.c.user_id).where(denied_members.c.guild_id == guild_id, denied_members.c.user_id == user_id)
    )
    return found is not None
