"""`pawtrait teach`, `pawtrait pets` and `pawtrait forget`: pets and their photos from the shell.

Pets made here belong to the guild 'local' (use --guild to reach a Discord server's pets).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from cli.commands import add_guild_option, on_own_loop
from config.settings import Settings
from storage.connect import open_storage
from storage.pets import LOCAL_GUILD, find_pet


def register(subparsers: argparse._SubParsersAction) -> None:
    teach = subparsers.add_parser(
        "teach",
        help="create a pet (or add to it) from photo files",
        description="Create the pet NAME, or add photos to it, from JPEG, PNG, WebP, HEIC or MPO files. "
        "Prints one line per file (accepted, or rejected/skipped with the reason), then a summary and "
        "the path of a contact sheet of the square crops it will train on. 10-15 varied photos work best. "
        "Exit status: 0 if the pet has at least one photo afterwards, 1 if none, 2 on usage errors.",
    )
    teach.add_argument("name", metavar="NAME", help="the pet's name, e.g. Thor")
    teach.add_argument(
        "--class", dest="class_noun", required=True, metavar="NOUN",
        help="what kind of animal it is, e.g. cat or dog (goes into every prompt)",
    )
    teach.add_argument("photos", nargs="+", type=Path, metavar="PHOTO", help="photo files")
    teach.add_argument("--owner", default=LOCAL_GUILD, metavar="ID", help="owner user id (default 'local')")
    add_guild_option(teach)
    teach.set_defaults(run=on_own_loop(_teach))

    pets = subparsers.add_parser(
        "pets",
        help="list pets with owner, class, token, photo count and status",
        description="List the pets of a guild: name, owner, class noun, trigger token, number of photos and "
        "status (needs photos, ready to train, queued for training, training, trained).",
    )
    add_guild_option(pets)
    pets.set_defaults(run=on_own_loop(_pets))

    forget = subparsers.add_parser(
        "forget",
        help="delete a pet with all its photos, trainings and generations",
        description="Delete the pet NAME with all its rows and files: photos, training runs and their "
        "checkpoints, generations. Asks for confirmation unless --yes is given.",
    )
    forget.add_argument("name", metavar="NAME", help="the pet's name")
    forget.add_argument("--yes", action="store_true", help="delete without asking")
    add_guild_option(forget)
    forget.set_defaults(run=on_own_loop(_forget))


def read_photo(path: Path) -> bytes:
    """At most one byte past the size limit: enough to refuse a huge video without reading all of it."""
    from engine.usecases.intake.decode import MAX_FILE_BYTES

    with open(path, "rb") as handle:
        return handle.read(MAX_FILE_BYTES + 1)


async def _teach(args: argparse.Namespace, settings: Settings) -> int:
    from engine.usecases.teach import teach_photos

    lines: dict[int, str] = {}
    files: list[tuple[str, bytes]] = []
    positions: list[int] = []
    for index, path in enumerate(args.photos):
        try:
            files.append((path.name, read_photo(path)))
            positions.append(index)
        except OSError as error:
            lines[index] = _line("rejected", path.name, f"cannot read the file ({error.strerror or error})")

    async with open_storage(settings) as (db, store):
        try:
            report = await teach_photos(
                db, store, settings, args.guild, args.owner, args.name, args.class_noun,
                files, added_by=args.owner, allow_other_owner=True,  # the operator may add to any pet
            )
        except ValueError as error:  # TeachError, PetNameTaken: plain messages
            print(f"pawtrait teach: {error}", file=sys.stderr)
            return 1
    for position, result in zip(positions, report.files):
        lines[position] = _line(result.status, result.name, result.reason)
    for index in sorted(lines):
        print(lines[index])
    if report.pet is None:
        print(f"no photo was usable, so {args.name} was not created")
        return 1
    pet = report.pet
    print(
        f"{pet.name} ({pet.class_noun}, trigger token {pet.token}): {report.accepted} photo"
        f"{'' if report.accepted == 1 else 's'} added, {report.total_photos} in all"
    )
    for warning in report.warnings:
        print(f"warning: {warning}")
    if report.contact_sheet is not None:
        print(f"contact sheet: {report.contact_sheet}")
    return 0 if report.total_photos else 1


def _line(status: str, name: str, reason: str) -> str:
    return f"{status:<9} {name}" + (f": {reason}" if reason else "")


async def _pets(args: argparse.Namespace, settings: Settings) -> int:
    from storage.pet_status import pet_summaries

    async with open_storage(settings) as storage:
        summaries = await pet_summaries(storage.db, args.guild)
    if not summaries:
        print("no pets yet; teach one with: pawtrait teach NAME --class cat PHOTO...")
        return 0
    header = ("NAME", "OWNER", "CLASS", "TOKEN", "PHOTOS", "STATUS")
    rows = [header] + [
        (pet.name, pet.owner_id, pet.class_noun, pet.token, str(pet.photos), pet.status) for pet in summaries
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return 0


async def _forget(args: argparse.Namespace, settings: Settings) -> int:
    from storage.pet_deletion import PetBusy, forget_pet, pet_footprint

    async with open_storage(settings) as (db, store):
        pet = await find_pet(db, args.guild, args.name)
        if pet is None:
            print(f"pawtrait forget: there is no pet called {args.name!r} in guild {args.guild!r}", file=sys.stderr)
            return 1
        footprint = await pet_footprint(db, pet.id)
        what = (
            f"{pet.name} and its {footprint.photos} photos, {footprint.runs} runs, "
            f"{footprint.generations} generations"
        )
        if not args.yes:
            if not sys.stdin.isatty():
                print(f"pawtrait forget: not deleting {what} without confirmation; pass --yes", file=sys.stderr)
                return 1
            answer = await asyncio.to_thread(input, f"Delete {what}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print(f"kept {pet.name}")
                return 1
        try:
            await forget_pet(db, store, pet)
        except PetBusy as error:
            print(f"pawtrait forget: {error}", file=sys.stderr)
            return 1
    print(f"deleted {what}")
    return 0
