"""SQL for pets. A pet belongs to one guild (or 'local' for the CLI) and is invisible elsewhere."""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass

import aiosqlite

LOCAL_GUILD = "local"
# Trigger tokens are short letter strings that CLIP splits into rare pieces, as DreamBooth's
# 'sks' is; letters only, because CLIP's tokenizer splits digits into separate tokens.
_TOKEN_LETTERS = "bcdfghjklmnpqrstvwxz"


class PetNameTaken(ValueError):
    """Another member of the guild already has a pet of that name."""


@dataclass(frozen=True)
class Pet:
    id: int
    guild_id: str
    owner_id: str
    name: str
    token: str
    class_noun: str
    active_checkpoint_id: int | None
    created_at: str

    @property
    def instance_prompt(self) -> str:
        return f"a photo of {self.token} {self.class_noun}"


def _pet(row: sqlite3.Row | None) -> Pet | None:
    if row is None:
        return None
    return Pet(**{key: row[key] for key in row.keys()})


_COLUMNS = "id, guild_id, owner_id, name, token, class_noun, active_checkpoint_id, created_at"


def new_token() -> str:
    return "".join(secrets.choice(_TOKEN_LETTERS) for _ in range(5))


async def create_pet(db: aiosqlite.Connection, guild_id: str, owner_id: str, name: str, class_noun: str) -> Pet:
    for _ in range(20):
        try:
            cursor = await db.execute(
                "INSERT INTO pets (guild_id, owner_id, name, token, class_noun) VALUES (?, ?, ?, ?, ?)",
                (guild_id, owner_id, name.strip(), new_token(), class_noun.strip().lower()),
            )
        except sqlite3.IntegrityError as error:
            if "pets.token" in str(error):
                continue  # token collision: draw another
            raise PetNameTaken(f"a pet called {name!r} already exists in this server") from error
        pet = await get_pet(db, cursor.lastrowid)
        assert pet is not None
        return pet
    raise RuntimeError("could not draw a unique trigger token")


async def get_pet(db: aiosqlite.Connection, pet_id: int) -> Pet | None:
    async with db.execute(f"SELECT {_COLUMNS} FROM pets WHERE id = ?", (pet_id,)) as cursor:
        return _pet(await cursor.fetchone())


async def find_pet(db: aiosqlite.Connection, guild_id: str, name: str) -> Pet | None:
    """The guild's pet of that name (case-insensitive)."""
    async with db.execute(
        f"SELECT {_COLUMNS} FROM pets WHERE guild_id = ? AND name = ? COLLATE NOCASE", (guild_id, name.strip())
    ) as cursor:
        return _pet(await cursor.fetchone())


async def list_pets(db: aiosqlite.Connection, guild_id: str, owner_id: str | None = None) -> list[Pet]:
    sql = f"SELECT {_COLUMNS} FROM pets WHERE guild_id = ?"
    args: list[str] = [guild_id]
    if owner_id is not None:
        sql += " AND owner_id = ?"
        args.append(owner_id)
    async with db.execute(sql + " ORDER BY created_at DESC, id DESC", args) as cursor:
        return [_pet(row) for row in await cursor.fetchall()]  # type: ignore[misc]


async def count_pets(db: aiosqlite.Connection, guild_id: str, owner_id: str) -> int:
    async with db.execute("SELECT count(*) FROM pets WHERE guild_id = ? AND owner_id = ?", (guild_id, owner_id)) as cursor:
        return (await cursor.fetchone())[0]


async def set_active_checkpoint(db: aiosqlite.Connection, pet_id: int, checkpoint_id: int | None) -> None:
    await db.execute("UPDATE pets SET active_checkpoint_id = ? WHERE id = ?", (checkpoint_id, pet_id))


async def delete_pet_row(db: aiosqlite.Connection, pet_id: int) -> None:
    """Delete the pet's row; photos, runs, checkpoints, votes and generations cascade."""
    await db.execute("DELETE FROM pets WHERE id = ?", (pet_id,))
