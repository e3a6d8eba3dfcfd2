"""SQL for a pet's photos. Paths are relative to the data folder (see storage.files)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, insert, select

from storage.db import Queries
from storage.dialects import utc_now
from storage.schema import photos


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


async def insert_photo(
    db: Queries,
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
    return int(await db.scalar(
        insert(photos)
        .values(
            pet_id=pet_id, sha256=sha256, phash=phash, original_name=original_name, original_path=original_path,
            prepared_path=prepared_path, width=width, height=height, crop_left=crop_left, crop_top=crop_top,
            crop_size=crop_size, added_by=added_by, added_at=utc_now(),
        )
        .returning(photos.c.id)
    ))


async def list_photos(db: Queries, pet_id: int) -> list[Photo]:
    """The pet's photos in the order they were added."""
    rows = await db.all(select(photos).where(photos.c.pet_id == pet_id).order_by(photos.c.id))
    return [Photo(**row) for row in rows]


async def count_photos(db: Queries, pet_id: int) -> int:
    return int(await db.scalar(select(func.count()).select_from(photos).where(photos.c.pet_id == pet_id)))
