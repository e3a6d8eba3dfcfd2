"""SQL for generations, and for finding the LoRA checkpoint a generation should use.

A generation's pictures are written to the file store first (under a folder of their own,
storage.keys.generation_folder); the row that lists them is inserted after, so a row never
points at files that do not exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.engine import RowMapping

from storage.db import Queries
from storage.dialects import utc_now
from storage.runs import file_key
from storage.schema import checkpoints, generations, training_runs


@dataclass(frozen=True)
class CheckpointRef:
    """A trained LoRA checkpoint of a pet, with the file-store key of its diffusers-format file."""

    id: int
    run_id: int
    step: int
    key: str


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
    gallery_channel_id: str | None = None  # where 📌 shared it, if it was
    gallery_message_id: str | None = None
    flagged: list[bool] | None = None  # the safety check's verdict per file; None when unscreened

    def is_flagged(self, index: int) -> bool:
        """Whether picture `index` (0 = first) was flagged; an unscreened picture was not."""
        return bool(self.flagged and self.flagged[index])


def _generation(row: RowMapping | None) -> Generation | None:
    if row is None:
        return None
    values = dict(row)
    values["files"] = json.loads(values["files"])
    values["flagged"] = json.loads(values["flagged"]) if values["flagged"] else None
    return Generation(**values)


_CHECKPOINTS = (
    select(checkpoints.c.id, checkpoints.c.run_id, checkpoints.c.step, checkpoints.c.path, checkpoints.c.diffusers_file)
    .join(training_runs, training_runs.c.id == checkpoints.c.run_id)
)


async def _checkpoint(db: Queries, statement) -> CheckpointRef | None:
    row = await db.one(statement)
    if row is None:
        return None
    return CheckpointRef(row["id"], row["run_id"], row["step"], file_key(row["path"], row["diffusers_file"]))


async def pet_checkpoint(db: Queries, pet_id: int, checkpoint_id: int) -> CheckpointRef | None:
    """That checkpoint if it belongs to the pet (any run, finished or not), else None."""
    return await _checkpoint(db, _CHECKPOINTS.where(training_runs.c.pet_id == pet_id, checkpoints.c.id == checkpoint_id))


async def default_checkpoint(db: Queries, pet_id: int, active_checkpoint_id: int | None) -> CheckpointRef | None:
    """The pet's active checkpoint; failing that its latest succeeded run's chosen (or last) one."""
    if active_checkpoint_id is not None:
        found = await pet_checkpoint(db, pet_id, active_checkpoint_id)
        if found is not None:
            return found
    chosen = checkpoints.c.id == training_runs.c.chosen_checkpoint_id
    return await _checkpoint(
        db,
        _CHECKPOINTS.where(training_runs.c.pet_id == pet_id, training_runs.c.status == "succeeded")
        .order_by(training_runs.c.finished_at.desc(), training_runs.c.id.desc(), chosen.desc(), checkpoints.c.step.desc())
        .limit(1),
    )


async def record_generation(
    db: Queries,
    files: list[str],
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
    flagged: list[bool] | None = None,
) -> Generation:
    """Insert the row of a generation whose pictures are already in the file store under `files`."""
    generation_id = await db.scalar(
        insert(generations)
        .values(
            guild_id=guild_id, pet_id=pet_id, checkpoint_id=checkpoint_id, prompt=prompt,
            negative_prompt=negative_prompt, seed=seed, steps=steps, guidance=guidance, width=width, height=height,
            lora_scale=lora_scale, files=json.dumps(files), requested_by=requested_by, created_at=utc_now(),
            source_generation_id=variation.generation_id if variation else None,
            source_image=variation.image if variation else None,
            variation_strength=variation.strength if variation else None,
            flagged=json.dumps(flagged) if flagged is not None else None,
        )
        .returning(generations.c.id)
    )
    generation = await get_generation(db, generation_id)
    assert generation is not None
    return generation


async def get_generation(db: Queries, generation_id: int) -> Generation | None:
    return _generation(await db.one(select(generations).where(generations.c.id == generation_id)))


async def generation_image_key(db: Queries, generation_id: int, image: int, guild_id: str) -> str | None:
    """The key of image `image` (1 = first) of a generation of `guild_id`; None if there is none."""
    generation = await get_generation(db, generation_id)
    if generation is None or generation.guild_id != guild_id or not 1 <= image <= len(generation.files):
        return None
    return generation.files[image - 1]
