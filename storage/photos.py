"""SQL for a pet's photos. Paths are relative to the data folder (see storage.files)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import aiosqlite


@dataclass(frozen=True)
class Photo:
    id: int
    pet_id: int
    sha256: str  # of the decoded RGB pixels
    phash: str  # 64-bit difference hash, hex
    original_name: str
    original_path: str  # the file exactly as the user sent it
    prepared_path: str  # the square training crop (PNG)
    width: int  # of the upright original
    height: int
    crop_left: int
    crop_top: int
    crop_size: int
    added_by: str
    added_at: str


_COLUMNS = (
    "id, pet_id, sha256, phash, original_name, original_path, prepared_path, width, height, "
    "crop_left, crop_top, crop_size, added_by, added_at"
)


def _photo(row: sqlite3.Row) -> Photo:
    return Photo(**{key: row[key] for key in row.keys()})


async def insert_photo(
    db: aiosqlite.Connection,
    pet_id: int,
    *,
    sha256: str,
    phash: str,
    original_name: str,
    original_path: str,
    prepared_path: str,
    width: int,
    height: int,
    crop: tuple[int, int, int],
    added_by: str,
) -> int:
    """Insert one photo row (its files must already be written); returns its id."""
    crop_left, crop_top, crop_size = crop
    cursor = await db.execute(
        "INSERT INTO photos (pet_id, sha256, phash, original_name, original_path, prepared_path, "
        "width, height, crop_left, crop_top, crop_size, added_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (pet_id, sha256, phash, original_name, original_path, prepared_path, width, height,
         crop_left, crop_top, crop_size, added_by),
    )
    return int(cursor.lastrowid)


async def list_photos(db: aiosqlite.Connection, pet_id: int) -> list[Photo]:
    """The pet's photos in the order they were added."""
    async with db.execute(f"SELECT {_COLUMNS} FROM photos WHERE pet_id = ? ORDER BY id", (pet_id,)) as cursor:
        return [_photo(row) for row in await cursor.fetchall()]


async def count_photos(db: aiosqlite.Connection, pet_id: int) -> int:
    async with db.execute("SELECT count(*) FROM photos WHERE pet_id = ?", (pet_id,)) as cursor:
        return int((await cursor.fetchone())[0])
