"""Deleting a pet with everything it owns, and sweeping files no row points at.

Order matters for "no row ever points at a missing file": rows go first, in one
transaction, then the files. A crash between the two leaves only files without rows, and
so does a crash between writing a file and committing its row; `sweep_orphans` (a worker
chore) removes them once they are old enough that no write in progress can own them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from sqlalchemy import func, select

from storage import keys
from storage.db import Queries
from storage.files import FileStore
from storage.pets import Pet, delete_pet_row
from storage.photos import count_photos
from storage.schema import checkpoints, generations, pets, photos, training_runs, validation_images

# A file younger than this may belong to a write whose row is not committed yet (another
# process teaching, training or painting right now), so the sweep leaves it alone.
SWEEP_MIN_AGE_S = 600.0
# The folders whose files belong to rows; everything else in the store (class images,
# temporary previews, the compile cache) is not indexed and never swept here.
SWEPT = ("pets", "runs", "generations")


class PetBusy(ValueError):
    """The pet cannot be deleted right now; the message says what to do."""


@dataclass(frozen=True)
class PetFootprint:
    """What deleting a pet removes, for the confirmation question and the reply."""

    photos: int
    runs: int
    generations: int


async def _ids(db: Queries, statement) -> list[int]:
    return [int(row[0]) for row in (await db.execute(statement)).all()]


async def pet_footprint(db: Queries, pet_id: int) -> PetFootprint:
    def count(table):
        return select(func.count()).select_from(table).where(table.c.pet_id == pet_id).scalar_subquery()

    row = await db.one(select(count(photos).label("p"), count(training_runs).label("r"), count(generations).label("g")))
    assert row is not None
    return PetFootprint(photos=row["p"], runs=row["r"], generations=row["g"])


async def forget_pet(db: Queries, store: FileStore, pet: Pet) -> PetFootprint:
    """Delete the pet's rows (photos, runs, checkpoints, votes, generations cascade), then its files.

    Refuses while one of its trainings is running: the trainer would keep writing
    checkpoints that no longer belong to anything.
    """
    async with db.transaction() as tx:
        running = await _ids(
            tx, select(training_runs.c.id).where(training_runs.c.pet_id == pet.id, training_runs.c.status == "running")
        )
        if running:
            raise PetBusy(f"{pet.name} is training right now; cancel the training first, then delete it.")
        footprint = await pet_footprint(tx, pet.id)
        run_ids = await _ids(tx, select(training_runs.c.id).where(training_runs.c.pet_id == pet.id))
        picture_lists = (await tx.execute(select(generations.c.files).where(generations.c.pet_id == pet.id))).all()
        await delete_pet_row(tx, pet.id)
    await store.delete_prefix(keys.pet_prefix(pet.id))
    for run_id in run_ids:
        await store.delete_prefix(keys.run_prefix(run_id))
    await store.delete([key for (files,) in picture_lists for key in json.loads(files)])
    return footprint


async def delete_pet_without_photos(db: Queries, pet_id: int) -> bool:
    """Delete the pet if it has no photo, checked and deleted in one transaction; True if it was.

    A `/teach` that created the pet and then failed takes it away again, unless a concurrent
    `/teach` of the same name committed photos of it meanwhile: those photos must stay. On
    PostgreSQL locking the pet's row waits for a transaction still inserting a photo of it
    (its foreign-key check holds the row) and makes a later one wait until the pet is gone,
    so the count is final; SQLite runs write transactions one at a time.
    """
    async with db.transaction() as tx:
        await tx.scalar(select(pets.c.id).where(pets.c.id == pet_id).with_for_update())
        if await count_photos(tx, pet_id):
            return False
        await delete_pet_row(tx, pet_id)
    return True


async def sweep_orphans(db: Queries, store: FileStore, min_age_s: float = SWEEP_MIN_AGE_S) -> list[str]:
    """Delete files under pets/, runs/ and generations/ that no row points at; returns their keys.

    A file belongs to a row when the row names it (photos, validation images, generations'
    pictures), when it lies in a checkpoint's folder, or when it is the contact sheet of a
    pet that still exists. Only files `min_age_s` old are touched.
    """
    owned = await named_files(db)
    pet_ids = {str(pet_id) for pet_id in await _ids(db, select(pets.c.id))}
    folders = {row[0] for row in (await db.execute(select(checkpoints.c.path))).all()}
    older_than = time.time() - min_age_s
    orphans = []
    for top in SWEPT:
        for item in await store.list(top):
            parts = item.key.split("/")
            if (
                item.modified >= older_than
                or item.key in owned
                or "/".join(parts[:4]) in folders  # runs/<run>/checkpoints/<folder>/<file>
                or (parts[0] == "pets" and parts[2:3] == ["sheet"] and parts[1] in pet_ids)
            ):
                continue
            orphans.append(item.key)
    await store.delete(orphans)
    return orphans


async def named_files(db: Queries) -> set[str]:
    """Every file a row names itself: photos, validation images, generations' pictures (checkpoint
    rows name a folder; their files are found by that folder)."""
    owned: set[str] = set()
    for row in (await db.execute(select(photos.c.original_path, photos.c.prepared_path))).all():
        owned.update(row)
    owned.update(row[0] for row in (await db.execute(select(validation_images.c.path))).all())
    for (files,) in (await db.execute(select(generations.c.files))).all():
        owned.update(json.loads(files))
    return owned
