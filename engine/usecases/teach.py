"""Teaching a pet: create it (or add to it) from uploaded photos, as one use case.

Shared by `pawtrait teach` and the Discord bot, so it takes plain bytes and ids and
returns a report to print or post; it never imports Discord. The heavy decoding runs in
a thread so a bot's event loop keeps answering while 15 photos are checked.

Adding photos is all or nothing: the files are written first, then their rows, inside
one transaction; if anything fails half way the files written so far are removed and
the rows rolled back, so no row points at a missing file and no file is left unindexed.
Files go to the file store (the data folder, or a bucket shared by many hosts).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sqlalchemy.exc import IntegrityError

from config.settings import Settings
from engine.usecases.intake.contact_sheet import contact_sheet_png
from engine.usecases.intake.screening import KnownPhoto, Status, Verdict, screen_files
from storage import keys
from storage.db import Queries
from storage.files import FileStore
from storage.pet_deletion import delete_pet_without_photos
from storage.pets import Pet, count_pets, create_pet, find_pet
from storage.photos import count_photos, insert_photo, list_photos

# The seed's advice: 10-15 varied photos work best; fewer than this rarely learns a pet.
MIN_GOOD_PHOTOS = 5
MAX_NAME_LENGTH = 32


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
    contact_sheet: Path | None  # a local copy of the sheet (the file store keeps the original)


# A pet's name is shown in the bot's own messages (bold, in lists, in code): with brackets it
# could be a masked link ("[free nitro](https://…)"), with a backtick it could end a code span.
NAME_FORBIDDEN = "[]`"


def clean_pet_name(name: str) -> str:
    cleaned = " ".join(name.split())
    if not 1 <= len(cleaned) <= MAX_NAME_LENGTH or not cleaned.isprintable():
        raise TeachError(f"A pet's name needs 1 to {MAX_NAME_LENGTH} printable characters.")
    if any(character in NAME_FORBIDDEN for character in cleaned):
        raise TeachError("A pet's name can't contain [ ] or ` (Discord would show links or code); choose another name.")
    return cleaned


def clean_class_noun(noun: str) -> str:
    """The class noun goes into every prompt ('a photo of TOK cat'), so it must be plain words."""
    cleaned = " ".join(noun.lower().split())
    if not 1 <= len(cleaned) <= MAX_NAME_LENGTH or not all(c.isalpha() or c in " -'" for c in cleaned):
        raise TeachError(f"The class must be a plain word such as cat or dog (letters only, at most {MAX_NAME_LENGTH}).")
    return cleaned


def display_name(file_name: str) -> str:
    """The file's own name without any folder part, as the user will recognise it."""
    base = PurePosixPath(file_name.replace("\\", "/")).name
    printable = "".join(c for c in base if c.isprintable()).strip()
    return printable[:100] or "photo"


async def teach_photos(
    db: Queries,
    store: FileStore,
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
    pet = await find_pet(db, guild_id, name)
    warnings: list[str] = []
    known: list[KnownPhoto] = []
    if pet is not None:
        if pet.owner_id != owner_id and not allow_other_owner:
            raise TeachError(f"{pet.name} belongs to another member.")
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
                f"You already have {owned} pets, the most allowed here; forget one before teaching {name}."
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
        pet, created = await _store(db, store, settings, pet, guild_id, owner_id, name, noun, added, added_by)
    total = await count_photos(db, pet.id) if pet is not None else 0
    sheet = None
    if pet is not None and total:
        sheet = await _refresh_contact_sheet(db, store, pet, rewrite=bool(added))
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
    db: Queries,
    store: FileStore,
    settings: Settings,
    pet: Pet | None,
    guild_id: str,
    owner_id: str,
    name: str,
    noun: str,
    added: list[Verdict],
    added_by: str,
) -> tuple[Pet, bool]:
    """Create the pet if needed and keep the accepted photos: files first, then rows, all or nothing.

    The files are uploaded before the transaction that records them opens: on PostgreSQL an
    open transaction holds back every reader of job events (storage.dialects.event_horizon),
    so none may wait for a bucket.
    """
    created = pet is None
    if pet is None:
        pet = await create_pet(db, guild_id, owner_id, name, noun)
    written: list[str] = []
    try:
        stored = [await _put_photo(store, pet, verdict, written) for verdict in added]
        async with db.transaction() as tx:
            if await count_photos(tx, pet.id) + len(added) > settings.max_photos_per_pet:
                raise TeachError(f"Photos were added to {pet.name} at the same time; send these again.")
            for verdict, (original, prepared) in zip(added, stored):
                await _record_photo(tx, pet, verdict, original, prepared, added_by)
    except BaseException as error:
        # The rows rolled back; take their files away too, and the pet made just now unless a
        # concurrent /teach of the same name committed photos of it meanwhile.
        await store.delete(written)
        if created:
            await delete_pet_without_photos(db, pet.id)
        if isinstance(error, IntegrityError):
            raise TeachError(f"The same photo was added to {name} at the same time; send these again.") from error
        raise
    return pet, created


async def _put_photo(store: FileStore, pet: Pet, verdict: Verdict, written: list[str]) -> tuple[str, str]:
    """The photo as sent and its prepared crop in the file store; returns their keys."""
    photo = verdict.photo
    assert photo is not None
    # Names from the pixel hash plus a random part: no user text, and two concurrent
    # teachers of the same photo never remove each other's file when one of them fails.
    stem = f"{photo.sha256[:16]}-{secrets.token_hex(4)}"
    original = keys.photo(pet.id, f"{stem}.{photo.extension}")
    prepared = keys.photo(pet.id, f"{stem}-crop.png")
    for key, content in ((original, photo.original), (prepared, photo.prepared_png)):
        written.append(key)
        await store.put_bytes(key, content)
    return original, prepared


async def _record_photo(db: Queries, pet: Pet, verdict: Verdict, original: str, prepared: str, added_by: str) -> None:
    photo = verdict.photo
    assert photo is not None
    await insert_photo(
        db,
        pet.id,
        sha256=photo.sha256,
        phash=photo.phash,
        original_name=verdict.name,
        original_path=original,
        prepared_path=prepared,
        width=photo.width,
        height=photo.height,
        crop=(photo.crop.left, photo.crop.top, photo.crop.size),
        added_by=added_by,
    )


async def _refresh_contact_sheet(db: Queries, store: FileStore, pet: Pet, rewrite: bool) -> Path:
    """The pet's contact sheet, drawn again when photos were added; its key is named by its
    content, so a copy cached on another host is never out of date."""
    folder = keys.contact_sheets(pet.id)
    earlier = [item.key for item in await store.list(folder)]
    if earlier and not rewrite:
        return await store.local_path(earlier[-1])
    crops = [await store.local_path(photo.prepared_path) for photo in await list_photos(db, pet.id)]
    png = await asyncio.to_thread(contact_sheet_png, crops)
    key = f"{folder}/{hashlib.sha256(png).hexdigest()[:16]}.png"
    await store.put_bytes(key, png)
    await store.delete([old for old in earlier if old != key])
    return await store.local_path(key)
