"""Teaching a pet: create it (or add to it) from uploaded photos, as one use case.

Shared by `pawtrait teach` and the Discord bot, so it takes plain bytes and ids and
returns a report to print or post; it never imports Discord. The heavy decoding runs in
a thread so a bot's event loop keeps answering while 15 photos are checked.

Adding photos is all or nothing: the files are written first, then their rows, inside
one transaction; if anything fails half way the files written so far are removed and
the rows rolled back, so no row points at a missing file and no file is left unindexed.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import aiosqlite

from engine.intake.contact_sheet import write_contact_sheet
from engine.intake.screening import KnownPhoto, Status, Verdict, screen_files
from engine.settings import Settings
from storage.db import transaction
from storage.files import DataDir, atomic_write_bytes, remove_tree
from storage.pet_deletion import sweep_orphans
from storage.pets import Pet, count_pets, create_pet, find_pet
from storage.photos import count_photos, insert_photo, list_photos

# The seed's advice: 10-15 varied photos work best; fewer than this rarely learns a pet.
MIN_GOOD_PHOTOS = 5
MAX_NAME_LENGTH = 32
CONTACT_SHEET = "contact-sheet.png"


class TeachError(ValueError):
    """Teaching cannot go ahead; the message says why in plain words."""


@dataclass(frozen=True)
class FileResult:
    name: str
    status: Status  # accepted | warning (accepted with a caveat) | rejected | skipped
    reason: str = ""


@dataclass(frozen=True)
class TeachReport:
    pet: Pet | None  # None when nothing was accepted for a pet that did not exist yet
    created: bool
    files: list[FileResult]
    accepted: int
    total_photos: int
    warnings: list[str]
    contact_sheet: Path | None


def clean_pet_name(name: str) -> str:
    cleaned = " ".join(name.split())
    if not 1 <= len(cleaned) <= MAX_NAME_LENGTH or not cleaned.isprintable():
        raise TeachError(f"a pet's name needs 1 to {MAX_NAME_LENGTH} printable characters")
    return cleaned


def clean_class_noun(noun: str) -> str:
    """The class noun goes into every prompt ('a photo of TOK cat'), so it must be plain words."""
    cleaned = " ".join(noun.lower().split())
    if not 1 <= len(cleaned) <= MAX_NAME_LENGTH or not all(c.isalpha() or c in " -'" for c in cleaned):
        raise TeachError(f"the class must be a plain word such as cat or dog (letters only, at most {MAX_NAME_LENGTH})")
    return cleaned


def display_name(file_name: str) -> str:
    """The file's own name without any folder part, as the user will recognise it."""
    base = PurePosixPath(file_name.replace("\\", "/")).name
    printable = "".join(c for c in base if c.isprintable()).strip()
    return printable[:100] or "photo"


async def teach_photos(
    db: aiosqlite.Connection,
    data: DataDir,
    settings: Settings,
    guild_id: str,
    owner_id: str,
    pet_name: str,
    class_noun: str,
    files: list[tuple[str, bytes]],
    added_by: str,
    *,
    allow_other_owner: bool = False,
) -> TeachReport:
    """Create the pet `pet_name` in the guild (or add to it) from `files` (name, bytes).

    Raises TeachError (or storage.pets.PetNameTaken) when the pet belongs to another
    member, the owner has too many pets, or the name or class is unusable.
    """
    name = clean_pet_name(pet_name)
    noun = clean_class_noun(class_noun)
    await sweep_orphans(db, data)
    pet = await find_pet(db, guild_id, name)
    warnings: list[str] = []
    known: list[KnownPhoto] = []
    if pet is not None:
        if pet.owner_id != owner_id and not allow_other_owner:
            raise TeachError(f"{pet.name} belongs to another member")
        if pet.class_noun != noun:
            warnings.append(f"{pet.name} was taught as a {pet.class_noun}; kept {pet.class_noun!r}")
        known = [
            KnownPhoto(photo.sha256, photo.phash, photo.original_name, taught_before=True)
            for photo in await list_photos(db, pet.id)
        ]
    else:
        owned = await count_pets(db, guild_id, owner_id)
        if owned >= settings.max_pets_per_user:
            raise TeachError(
                f"you already have {owned} pets, the most allowed here; forget one before teaching {name}"
            )
    verdicts = await asyncio.to_thread(
        screen_files,
        [(display_name(file_name), content) for file_name, content in files],
        known,
        len(known),
        settings.max_photos_per_pet,
        settings.resolution,
    )
    added = [verdict for verdict in verdicts if verdict.added]
    created = False
    if added:
        pet, created = await _store(db, data, settings, pet, guild_id, owner_id, name, noun, added, added_by)
    total = await count_photos(db, pet.id) if pet is not None else 0
    sheet = None
    if pet is not None and total:
        sheet = await _refresh_contact_sheet(db, data, pet, rewrite=bool(added))
    if pet is not None and total < MIN_GOOD_PHOTOS:
        warnings.append(
            f"{pet.name} has only {total} photo{'s' if total != 1 else ''}: 10-15 varied photos "
            f"(different poses, places and light) train best, at least {MIN_GOOD_PHOTOS}"
        )
    return TeachReport(
        pet=pet,
        created=created,
        files=[FileResult(verdict.name, verdict.status, verdict.reason) for verdict in verdicts],
        accepted=len(added),
        total_photos=total,
        warnings=warnings,
        contact_sheet=sheet,
    )


async def _store(
    db: aiosqlite.Connection,
    data: DataDir,
    settings: Settings,
    pet: Pet | None,
    guild_id: str,
    owner_id: str,
    name: str,
    noun: str,
    added: list[Verdict],
    added_by: str,
) -> tuple[Pet, bool]:
    """Create the pet if needed and keep the accepted photos: files first, then rows, all or nothing."""
    async with transaction(db):
        created = pet is None
        if pet is None:
            pet = await create_pet(db, guild_id, owner_id, name, noun)
        elif await count_photos(db, pet.id) + len(added) > settings.max_photos_per_pet:
            raise TeachError(f"photos were added to {pet.name} at the same time; send these again")
        written: list[Path] = []
        try:
            for verdict in added:
                await _keep_photo(db, data, pet, verdict, added_by, written)
        except BaseException as error:
            # Undo the files before the rows roll back, so neither outlives the other.
            for path in written:
                path.unlink(missing_ok=True)
            if created:
                remove_tree(data.pet_dir(pet.id))
            if isinstance(error, sqlite3.IntegrityError):
                raise TeachError(f"the same photo was added to {name} at the same time; send these again") from error
            raise
    return pet, created


async def _keep_photo(
    db: aiosqlite.Connection, data: DataDir, pet: Pet, verdict: Verdict, added_by: str, written: list[Path]
) -> None:
    photo = verdict.photo
    assert photo is not None
    # Names from the pixel hash plus a random part: no user text, and two concurrent
    # teachers of the same photo never remove each other's file when one of them fails.
    stem = f"{photo.sha256[:16]}-{secrets.token_hex(4)}"
    original = data.photos_dir(pet.id) / f"{stem}.{photo.extension}"
    prepared = data.photos_dir(pet.id) / f"{stem}-crop.png"
    for path, content in ((original, photo.original), (prepared, photo.prepared_png)):
        await asyncio.to_thread(atomic_write_bytes, path, content)
        written.append(path)
    await insert_photo(
        db,
        pet.id,
        sha256=photo.sha256,
        phash=photo.phash,
        original_name=verdict.name,
        original_path=data.rel(original),
        prepared_path=data.rel(prepared),
        width=photo.width,
        height=photo.height,
        crop=(photo.crop.left, photo.crop.top, photo.crop.size),
        added_by=added_by,
    )


async def _refresh_contact_sheet(db: aiosqlite.Connection, data: DataDir, pet: Pet, rewrite: bool) -> Path:
    target = data.pet_dir(pet.id) / CONTACT_SHEET
    if rewrite or not target.is_file():
        crops = [data.abs(photo.prepared_path) for photo in await list_photos(db, pet.id)]
        await asyncio.to_thread(write_contact_sheet, crops, target)
    return target
