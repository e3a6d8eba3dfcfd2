"""SQL for generations, and for finding the LoRA checkpoint a generation should use.

A generation's row is inserted in the same transaction that moves its finished PNGs into
`generations/<id>/`, so a row never points at files that do not exist.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from storage.db import transaction
from storage.files import DataDir, remove_tree


@dataclass(frozen=True)
class CheckpointRef:
    """A trained LoRA checkpoint of a pet, with its diffusers-format file on disk."""

    id: int
    run_id: int
    step: int
    file: Path


@dataclass(frozen=True)
class VariationSource:
    """Which picture a variation repainted (image `image`, 1 = first, of generation `generation_id`) and how strongly."""

    generation_id: int
    image: int
    strength: float


@dataclass(frozen=True)
class Generation:
    id: int
    guild_id: str
    pet_id: int | None
    checkpoint_id: int | None
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    lora_scale: float
    files: list[str]
    requested_by: str
    message_id: str | None
    created_at: str
    source_generation_id: int | None = None  # set for a variation (see VariationSource)
    source_image: int | None = None
    variation_strength: float | None = None


_COLUMNS = (
    "id, guild_id, pet_id, checkpoint_id, prompt, negative_prompt, seed, steps, guidance, width, height, "
    "lora_scale, files, requested_by, message_id, created_at, source_generation_id, source_image, variation_strength"
)


def _generation(row: sqlite3.Row | None) -> Generation | None:
    if row is None:
        return None
    values = {key: row[key] for key in row.keys()}
    values["files"] = json.loads(values["files"])
    return Generation(**values)


def _lora_file(data: DataDir, folder: str, diffusers_file: str) -> Path:
    """The checkpoint's file: `diffusers_file` is a name inside `folder` or a data-relative path."""
    inside = data.abs(folder) / diffusers_file
    return inside if inside.is_file() or not data.abs(diffusers_file).is_file() else data.abs(diffusers_file)


_CHECKPOINT_SQL = (
    "SELECT c.id, c.run_id, c.step, c.path, c.diffusers_file FROM checkpoints c "
    "JOIN training_runs r ON r.id = c.run_id WHERE r.pet_id = ?"
)


async def _checkpoint(db: aiosqlite.Connection, data: DataDir, sql: str, args: tuple) -> CheckpointRef | None:
    async with db.execute(sql, args) as cursor:
        row = await cursor.fetchone()
    if row is None:
        return None
    return CheckpointRef(id=row["id"], run_id=row["run_id"], step=row["step"], file=_lora_file(data, row["path"], row["diffusers_file"]))


async def pet_checkpoint(db: aiosqlite.Connection, data: DataDir, pet_id: int, checkpoint_id: int) -> CheckpointRef | None:
    """That checkpoint if it belongs to the pet (any run, finished or not), else None."""
    return await _checkpoint(db, data, _CHECKPOINT_SQL + " AND c.id = ?", (pet_id, checkpoint_id))


async def default_checkpoint(
    db: aiosqlite.Connection, data: DataDir, pet_id: int, active_checkpoint_id: int | None
) -> CheckpointRef | None:
    """The pet's active checkpoint; failing that its latest succeeded run's chosen (or last) one."""
    if active_checkpoint_id is not None:
        found = await pet_checkpoint(db, data, pet_id, active_checkpoint_id)
        if found is not None:
            return found
    return await _checkpoint(
        db,
        data,
        _CHECKPOINT_SQL + " AND r.status = 'succeeded' "
        "ORDER BY r.finished_at DESC, r.id DESC, (c.id = r.chosen_checkpoint_id) DESC, c.step DESC LIMIT 1",
        (pet_id,),
    )


async def record_generation(
    db: aiosqlite.Connection,
    data: DataDir,
    staged_dir: Path,
    *,
    guild_id: str,
    pet_id: int | None,
    checkpoint_id: int | None,
    prompt: str,
    negative_prompt: str,
    seed: int,
    steps: int,
    guidance: float,
    width: int,
    height: int,
    lora_scale: float,
    requested_by: str,
    variation: VariationSource | None = None,
) -> Generation:
    """Insert the row and move `staged_dir`'s files to `generations/<id>/`, all or nothing."""
    names = sorted(path.name for path in staged_dir.iterdir() if path.is_file())
    target: Path | None = None
    try:
        async with transaction(db):
            cursor = await db.execute(
                "INSERT INTO generations (guild_id, pet_id, checkpoint_id, prompt, negative_prompt, seed, steps, "
                "guidance, width, height, lora_scale, requested_by, source_generation_id, source_image, "
                "variation_strength) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (guild_id, pet_id, checkpoint_id, prompt, negative_prompt, seed, steps, guidance, width, height,
                 lora_scale, requested_by, variation.generation_id if variation else None,
                 variation.image if variation else None, variation.strength if variation else None),
            )
            generation_id = cursor.lastrowid
            target = data.generation_dir(generation_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_tree(target)  # leftovers of a crash between a rename and its commit
            os.replace(staged_dir, target)
            files = [data.rel(target / name) for name in names]
            await db.execute("UPDATE generations SET files = ? WHERE id = ?", (json.dumps(files), generation_id))
    except BaseException:
        if target is not None and target.exists() and not staged_dir.exists():
            os.replace(target, staged_dir)  # give the files back to the caller, row rolled back
        raise
    generation = await get_generation(db, generation_id)
    assert generation is not None
    return generation


async def get_generation(db: aiosqlite.Connection, generation_id: int) -> Generation | None:
    async with db.execute(f"SELECT {_COLUMNS} FROM generations WHERE id = ?", (generation_id,)) as cursor:
        return _generation(await cursor.fetchone())


async def generation_image_file(
    db: aiosqlite.Connection, data: DataDir, generation_id: int, image: int, guild_id: str
) -> Path | None:
    """Image `image` (1 = first) of a generation of `guild_id`, inside the data folder; None if there is none."""
    generation = await get_generation(db, generation_id)
    if generation is None or generation.guild_id != guild_id or not 1 <= image <= len(generation.files):
        return None
    return data.abs(generation.files[image - 1])
