"""Queueing a training run: the checks a user can fail, in plain words, before any GPU work.

Kept free of torch so the bot can create runs from its event loop.
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from engine.training.params import TrainingParams
from storage import runs
from storage.files import DataDir
from storage.pets import Pet, get_pet
from storage.photos import list_photos


class TrainingInputError(ValueError):
    """The run cannot start as asked; the message says what to do."""


async def training_photos(db: aiosqlite.Connection, data: DataDir, pet: Pet) -> list[Path]:
    photos = await list_photos(db, pet.id)
    if not photos:
        raise TrainingInputError(
            f"{pet.name} has no photos yet; add 10-15 photos of {pet.name} before training"
        )
    paths = [data.abs(photo.prepared_path) for photo in photos]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise TrainingInputError(
            f"{len(missing)} of {pet.name}'s prepared photos are missing from the data folder "
            f"(e.g. {missing[0]}); remove and add those photos again"
        )
    return paths


async def create_run(db: aiosqlite.Connection, data: DataDir, pet: Pet, params: TrainingParams) -> int:
    """Check the pet, its photos and the parameters, then queue a run; returns its id."""
    if await get_pet(db, pet.id) is None:
        raise TrainingInputError(f"the pet {pet.name!r} no longer exists")
    try:
        params.validate()
    except ValueError as error:
        raise TrainingInputError(str(error)) from None
    await training_photos(db, data, pet)
    return await runs.insert_run(db, pet.id, params.to_dict(), params.steps)
