"""SQL for pets. A pet belongs to one guild (or 'local' for the CLI) and is invisible elsewhere."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from storage.db import Queries
from storage.dialects import utc_now
from storage.schema import pets

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


def _pet(row: RowMapping | None) -> Pet | None:
    return None if row is None else Pet(**row)


def new_token() -> str:
    return "".join(secrets.choice(_TOKEN_LETTERS) for _ in range(5))


def _same_name(name: str):
    # Case-insensitive, as the unique index is (SQLite NOCASE, PostgreSQL lower()).
    return func.lower(pets.c.name) == func.lower(name.strip())


async def create_pet(db: Queries, guild_id: str, owner_id: str, name: str, class_noun: str) -> Pet:
    for _ in range(20):
        try:
            async with db.savepoint() as part:
                pet_id = await part.scalar(
                    insert(pets)
                    .values(guild_id=guild_id, owner_id=owner_id, name=name.strip(), token=new_token(),
                            class_noun=class_noun.strip().lower(), created_at=utc_now())
                    .returning(pets.c.id)
                )
        except IntegrityError as error:
            if "token" in str(error.orig):
                continue  # token collision: draw another
            raise PetNameTaken(f"A pet called {name!r} already exists in this server.") from error
        pet = await get_pet(db, pet_id)
        assert pet is not None
        return pet
    raise RuntimeError("could not draw a unique trigger token")


async def get_pet(db: Queries, pet_id: int) -> Pet | None:
    return _pet(await db.one(select(pets).where(pets.c.id == pet_id)))


async def find_pet(db: Queries, guild_id: str, name: str) -> Pet | None:
    """The guild's pet of that name (case-insensitive)."""
    return _pet(await db.one(select(pets).where(pets.c.guild_id == guild_id, _same_name(name))))


async def list_pets(db: Queries, guild_id: str, owner_id: str | None = None) -> list[Pet]:
    statement = select(pets).where(pets.c.guild_id == guild_id)
    if owner_id is not None:
        statement = statement.where(pets.c.owner_id == owner_id)
    rows = await db.all(statement.order_by(pets.c.created_at.desc(), pets.c.id.desc()))
    return [Pet(**row) for row in rows]


async def count_pets(db: Queries, guild_id: str, owner_id: str) -> int:
    return int(await db.scalar(
        select(func.count()).select_from(pets).where(pets.c.guild_id == guild_id, pets.c.owner_id == owner_id)
    ))


async def set_active_checkpoint(db: Queries, pet_id: int, checkpoint_id: int | None) -> None:
    await db.execute(update(pets).where(pets.c.id == pet_id).values(active_checkpoint_id=checkpoint_id))


async def delete_pet_row(db: Queries, pet_id: int) -> None:
    """Delete the pet's row; photos, runs, checkpoints, votes and generations cascade."""
    await db.execute(delete(pets).where(pets.c.id == pet_id))
