"""One line of facts per pet for listings (`pawtrait pets`, the bot's pet list)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.engine import RowMapping

from storage.db import Queries
from storage.schema import checkpoints, pets, photos, training_runs


@dataclass(frozen=True)
class PetSummary:
    id: int
    name: str
    owner_id: str
    class_noun: str
    token: str
    photos: int
    status: str  # needs photos | ready to train | queued for training | training (step n/N) | trained (step n)


def _newest(column, status: str):
    """`column` of the pet's newest training run with that status."""
    return (
        select(column)
        .where(training_runs.c.pet_id == pets.c.id, training_runs.c.status == status)
        .order_by(training_runs.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


_SUMMARIES = select(
    pets.c.id, pets.c.name, pets.c.owner_id, pets.c.class_noun, pets.c.token,
    select(func.count()).select_from(photos).where(photos.c.pet_id == pets.c.id).scalar_subquery().label("photos"),
    select(checkpoints.c.step).where(checkpoints.c.id == pets.c.active_checkpoint_id).scalar_subquery()
    .label("active_step"),
    _newest(training_runs.c.step, "running").label("running_step"),
    _newest(training_runs.c.total_steps, "running").label("running_total"),
    select(func.count()).select_from(training_runs)
    .where(training_runs.c.pet_id == pets.c.id, training_runs.c.status == "queued").scalar_subquery().label("queued"),
    _newest(training_runs.c.step, "succeeded").label("trained_step"),
).order_by(func.lower(pets.c.name), pets.c.id)


def _status(row: RowMapping) -> str:
    """What the owner would do next depends on this, so a running training wins over the rest."""
    if row["running_step"] is not None:
        return f"training (step {row['running_step']}/{row['running_total']})"
    if row["queued"]:
        return "queued for training"
    trained_step = row["active_step"] if row["active_step"] is not None else row["trained_step"]
    if trained_step is not None:
        return f"trained (step {trained_step})"
    return "ready to train" if row["photos"] else "needs photos"


async def pet_summaries(db: Queries, guild_id: str) -> list[PetSummary]:
    """The guild's pets by name, with photo counts and a status derived from their runs."""
    rows = await db.all(_SUMMARIES.where(pets.c.guild_id == guild_id))
    return [
        PetSummary(
            id=row["id"],
            name=row["name"],
            owner_id=row["owner_id"],
            class_noun=row["class_noun"],
            token=row["token"],
            photos=row["photos"],
            status=_status(row),
        )
        for row in rows
    ]
