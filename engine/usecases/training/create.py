"""Queueing a training run: the checks a user can fail, in plain words, before any GPU work.

Kept free of torch so the bot can create runs from its event loop.
"""

from __future__ import annotations

from pathlib import Path

from engine.usecases.training.params import TrainingInputError, TrainingParams
from storage import runs
from storage.db import Queries
from storage.files import FileMissing, FileStore
from storage.pets import Pet, get_pet
from storage.photos import list_photos


async def training_photos(db: Queries, store: FileStore, pet: Pet) -> list[Path]:
    """Local copies of the pet's prepared photos (fetched from the file store when it is remote)."""
    paths, missing = [], []
    for key in await _prepared_keys(db, pet):
        try:
            paths.append(await store.local_path(key))
        except FileMissing:
            missing.append(key)
    _refuse_missing(pet, missing)
    return paths


async def create_run(db: Queries, store: FileStore, pet: Pet, params: TrainingParams) -> int:
    """Check the pet and its photos (the parameters checked themselves when made), then queue a run; returns its id.

    The photos are only looked up, not fetched: the worker that runs the training fetches them.
    """
    if await get_pet(db, pet.id) is None:
        raise TrainingInputError(f"The pet {pet.name!r} no longer exists.")
    _refuse_missing(pet, [key for key in await _prepared_keys(db, pet) if not await store.exists(key)])
    return await runs.insert_run(db, pet.id, params.to_dict(), params.steps)


async def _prepared_keys(db: Queries, pet: Pet) -> list[str]:
    photos = await list_photos(db, pet.id)
    if not photos:
        raise TrainingInputError(f"{pet.name} has no photos yet: teach it 10-15 photos of {pet.name} before training.")
    return [photo.prepared_path for photo in photos]


def _refuse_missing(pet: Pet, missing: list[str]) -> None:
    if missing:
        raise TrainingInputError(
            f"{len(missing)} of {pet.name}'s prepared photos are missing from the file store "
            f"(e.g. {missing[0].rpartition('/')[2]}); remove and add those photos again."
        )
