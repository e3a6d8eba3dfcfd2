"""Deleting a pet with everything it owns, and sweeping folders no row points at.

Order matters for "no row ever points at a missing file": the rows go first, in one
transaction, then the folders. A crash between the two leaves only folders without rows,
which `sweep_orphans` removes later (it runs at the start of every teach and forget).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from storage.db import transaction
from storage.files import DataDir, remove_tree
from storage.pets import Pet, delete_pet_row

# A folder or file younger than this may belong to a write whose row is not committed yet
# (another process teaching or generating right now), so the sweep leaves it alone.
SWEEP_MIN_AGE_S = 600.0


class PetBusy(ValueError):
    """The pet cannot be deleted right now; the message says what to do."""


@dataclass(frozen=True)
class PetFootprint:
    """What deleting a pet removes, for the confirmation question and the reply."""

    photos: int
    runs: int
    generations: int


async def _ids(db: aiosqlite.Connection, sql: str, args: tuple = ()) -> list[int]:
    async with db.execute(sql, args) as cursor:
        return [int(row[0]) for row in await cursor.fetchall()]


async def pet_footprint(db: aiosqlite.Connection, pet_id: int) -> PetFootprint:
    async with db.execute(
        "SELECT (SELECT count(*) FROM photos WHERE pet_id = ?), "
        "(SELECT count(*) FROM training_runs WHERE pet_id = ?), "
        "(SELECT count(*) FROM generations WHERE pet_id = ?)",
        (pet_id, pet_id, pet_id),
    ) as cursor:
        photos, runs, generations = await cursor.fetchone()
    return PetFootprint(photos=photos, runs=runs, generations=generations)


async def forget_pet(db: aiosqlite.Connection, data: DataDir, pet: Pet) -> PetFootprint:
    """Delete the pet's rows (photos, runs, checkpoints, votes, generations cascade), then its folders.

    Refuses while one of its trainings is running: the trainer would keep writing
    checkpoints into folders that no longer belong to anything.
    """
    await sweep_orphans(db, data)
    async with transaction(db):
        running = await _ids(db, "SELECT id FROM training_runs WHERE pet_id = ? AND status = 'running'", (pet.id,))
        if running:
            raise PetBusy(f"{pet.name} is training right now; cancel the training first, then delete it")
        footprint = await pet_footprint(db, pet.id)
        run_ids = await _ids(db, "SELECT id FROM training_runs WHERE pet_id = ?", (pet.id,))
        generation_ids = await _ids(db, "SELECT id FROM generations WHERE pet_id = ?", (pet.id,))
        await delete_pet_row(db, pet.id)
    folders = [data.pet_dir(pet.id)]
    folders += [data.run_dir(run_id) for run_id in run_ids]
    folders += [data.generation_dir(generation_id) for generation_id in generation_ids]
    await asyncio.to_thread(_remove_all, folders)
    return footprint


def _remove_all(folders: list[Path]) -> None:
    for folder in folders:
        remove_tree(folder)


async def sweep_orphans(
    db: aiosqlite.Connection, data: DataDir, min_age_s: float = SWEEP_MIN_AGE_S
) -> list[Path]:
    """Remove pet, run and generation folders without a row, and photo files no row points at.

    Such leftovers come from a crash between writing files and committing their rows, or
    between deleting rows and deleting folders. Only folders named by a numeric id are
    touched, and only once they are `min_age_s` old. Returns what was removed.
    """
    pet_ids = set(await _ids(db, "SELECT id FROM pets"))
    run_ids = set(await _ids(db, "SELECT id FROM training_runs"))
    generation_ids = set(await _ids(db, "SELECT id FROM generations"))
    async with db.execute("SELECT original_path, prepared_path FROM photos") as cursor:
        photo_files = {path for row in await cursor.fetchall() for path in row}
    return await asyncio.to_thread(
        _sweep, data, pet_ids, run_ids, generation_ids, photo_files, time.time() - min_age_s
    )


def _sweep(
    data: DataDir,
    pet_ids: set[int],
    run_ids: set[int],
    generation_ids: set[int],
    photo_files: set[str],
    older_than: float,
) -> list[Path]:
    removed: list[Path] = []
    for parent, known in (
        (data.root / "pets", pet_ids),
        (data.root / "runs", run_ids),
        (data.generations_dir(), generation_ids),
    ):
        for folder in _numbered_folders(parent):
            if int(folder.name) not in known and _mtime(folder) < older_than:
                remove_tree(folder)
                removed.append(folder)
    for pet_id in pet_ids:
        photos = data.photos_dir(pet_id)
        if not photos.is_dir():
            continue
        for file in photos.iterdir():
            if data.rel(file) not in photo_files and file.is_file() and _mtime(file) < older_than:
                file.unlink(missing_ok=True)
                removed.append(file)
    return removed


def _numbered_folders(parent: Path) -> list[Path]:
    if not parent.is_dir():
        return []
    return [child for child in parent.iterdir() if child.is_dir() and child.name.isdigit()]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")
