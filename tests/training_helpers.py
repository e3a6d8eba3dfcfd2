"""Helpers for the training tests: a pet with prepared photos, written as the intake would."""

from __future__ import annotations

import hashlib

import aiosqlite
import numpy as np
from PIL import Image

from storage.files import DataDir
from storage.pets import LOCAL_GUILD, Pet, create_pet


async def pet_with_photos(
    db: aiosqlite.Connection, data: DataDir, name: str = "Thor", class_noun: str = "cat", count: int = 3, size: int = 64
) -> Pet:
    """A pet with `count` square PNG photos in its folder and their rows, inserted with plain SQL."""
    pet = await create_pet(db, LOCAL_GUILD, "owner", name, class_noun)
    folder = data.photos_dir(pet.id)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(pet.id)
    for index in range(count):
        # A smooth gradient plus noise: enough structure for the VAE, different per photo.
        base = np.linspace(0, 255, size, dtype=np.float32)[None, :, None] * np.array([1.0, 0.6, 0.3])
        pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        path = folder / f"prepared-{index}.png"
        Image.fromarray(pixels).save(path)
        digest = hashlib.sha256(pixels.tobytes()).hexdigest()
        await db.execute(
            "INSERT INTO photos (pet_id, sha256, phash, original_name, original_path, prepared_path, width, height, "
            "crop_left, crop_top, crop_size, added_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, 'owner')",
            (pet.id, digest, "0" * 16, f"{index}.png", data.rel(path), data.rel(path), size, size, size),
        )
    return pet
