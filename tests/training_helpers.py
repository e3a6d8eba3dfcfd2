"""Helpers for the training tests: a pet with prepared photos, written as the intake would, and a
run with a checkpoint, written as a training would."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from storage import keys, runs
from storage.db import Queries
from storage.files import FileStore
from storage.pets import LOCAL_GUILD, Pet, create_pet
from storage.photos import insert_photo


async def pet_with_photos(
    db: Queries, store: FileStore, name: str = "Thor", class_noun: str = "cat", count: int = 3, size: int = 64
) -> Pet:
    """A pet with `count` square PNG photos in the file store and their rows."""
    pet = await create_pet(db, LOCAL_GUILD, "owner", name, class_noun)
    rng = np.random.default_rng(pet.id)
    for index in range(count):
        # A smooth gradient plus noise: enough structure for the VAE, different per photo.
        base = np.linspace(0, 255, size, dtype=np.float32)[None, :, None] * np.array([1.0, 0.6, 0.3])
        pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        key = keys.photo(pet.id, f"prepared-{index}.png")
        await store.put_bytes(key, buffer.getvalue())
        await insert_photo(
            db, pet.id, sha256=hashlib.sha256(pixels.tobytes()).hexdigest(), phash="0" * 16,
            original_name=f"{index}.png", original_path=key, prepared_path=key, width=size, height=size,
            crop=(0, 0, size), added_by="owner",
        )
    return pet


@dataclass
class StoredRun:
    run_id: int
    checkpoint: str  # the checkpoint's folder in the store
    checkpoint_id: int
    validation: str  # the validation image's key


async def run_with_a_checkpoint(
    db: Queries, store: FileStore, pet: Pet, step: int, extra_files: tuple[str, ...] = ()
) -> StoredRun:
    """A run of `step` steps as a training leaves it: the checkpoint's files (its LoRA in both
    formats, and `extra_files`) in the store, then its row, and one validation image painted with it."""
    run_id = await runs.insert_run(db, pet.id, {}, step)
    checkpoint = keys.checkpoint(run_id, step, keys.new_tag())
    diffusers = f"{checkpoint}/pytorch_lora_weights.safetensors"
    kohya = f"{checkpoint}/pawtrait-{pet.name.lower()}.safetensors"
    for key in (diffusers, kohya, *(f"{checkpoint}/{name}" for name in extra_files)):
        await store.put_bytes(key, b"weights")
    checkpoint_id = await runs.add_checkpoint(db, run_id, step, checkpoint, diffusers, kohya)
    validation = keys.validation_image(run_id, step, 0, keys.new_tag())
    await store.put_bytes(validation, b"png")
    await runs.add_validation_image(db, run_id, step, checkpoint_id, f"a photo of {pet.name}", 42, validation)
    return StoredRun(run_id, checkpoint, checkpoint_id, validation)
