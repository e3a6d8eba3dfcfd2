"""Moving an installation to other storage (`pawtrait migrate-to`): every record with its id,
then every file under its key, then a check that each file a record names arrived.

The usual move is from one host (the SQLite file and the data folder) to many (PostgreSQL
and a bucket); any database to any database and any store to any store works the same.
Runtime state (live workers, named leases) is not copied: it is rebuilt when workers start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy import Table, func, insert, select, update

from storage.db import Database, Queries
from storage.dialects import ResetSequence
from storage.files import FileStore
from storage.pet_deletion import named_files
from storage.runs import file_key
from storage.schema import (
    checkpoints,
    discord_jobs,
    discord_relay,
    generations,
    guild_settings,
    job_events,
    jobs,
    pet_sharing,
    pets,
    photos,
    training_runs,
    validation_images,
    votes,
)

# Parents before children; the two links back to checkpoints are filled in afterwards.
TABLES = (
    pets, photos, training_runs, checkpoints, validation_images, votes, generations, jobs, job_events,
    guild_settings, pet_sharing, discord_jobs, discord_relay,
)
LINKS_BACK = {pets: "active_checkpoint_id", training_runs: "chosen_checkpoint_id"}
WITH_SERIAL_IDS = (pets, photos, training_runs, checkpoints, validation_images, votes, generations, jobs, job_events)
BATCH = 500
# Files that belong to the installation (the rest of a data folder is this host's: its
# database file, temporary files, caches, compiled code).
FILE_FOLDERS = ("pets", "runs", "generations", "class-images")


class TargetNotEmpty(ValueError):
    """The target database already has records; the message says what to do."""


async def copy_records(source: Queries, target: Database) -> dict[str, int]:
    """Copy every record, ids and all, in one transaction on the target; returns rows per table."""
    for table in (pets, jobs):
        if await target.scalar(select(func.count()).select_from(table)):
            raise TargetNotEmpty(
                f"the target database {target.describe()} already has {table.name}; migrate into an empty database"
            )
    counts: dict[str, int] = {}
    links: list[tuple[Table, int, str, int]] = []  # (table, row id, column, checkpoint id), set once checkpoints exist
    async with target.transaction() as tx:
        for table in TABLES:
            rows = [dict(row) for row in await source.all(select(table).order_by(*table.primary_key.columns))]
            link = LINKS_BACK.get(table)
            for start in range(0, len(rows), BATCH):
                batch = [{**row, link: None} if link else row for row in rows[start:start + BATCH]]
                await tx.execute(insert(table), batch)
            if link:
                links += [(table, row["id"], link, row[link]) for row in rows if row[link] is not None]
            counts[table.name] = len(rows)
        for table, row_id, column, checkpoint_id in links:
            await tx.execute(update(table).where(table.c.id == row_id).values({column: checkpoint_id}))
        for table in WITH_SERIAL_IDS:
            await tx.execute(ResetSequence(table))
    return counts


async def copy_files(
    source: FileStore, target: FileStore, on_file: Callable[[int, int], None] | None = None, parallel: int = 8
) -> int:
    """Copy every file of the installation (same keys); returns how many. Files already in the
    target with the same size are skipped, so an interrupted copy can simply be run again."""
    wanted = [item for folder in FILE_FOLDERS for item in await source.list(folder)]
    present = {item.key: item.size for folder in FILE_FOLDERS for item in await target.list(folder)}
    todo = [item for item in wanted if present.get(item.key) != item.size]
    done = 0
    gate = asyncio.Semaphore(parallel)

    async def copy(key: str) -> None:
        nonlocal done
        async with gate:
            await target.put_file(key, await source.local_path(key))
            done += 1
            if on_file is not None:
                on_file(done, len(todo))

    await asyncio.gather(*(copy(item.key) for item in todo))
    return len(wanted)


async def missing_files(db: Queries, store: FileStore) -> list[str]:
    """Files records name that the store does not have (none, after a complete copy)."""
    named = await named_files(db)
    for row in await db.all(select(checkpoints.c.diffusers_file, checkpoints.c.kohya_file, checkpoints.c.path)):
        named.update(file_key(row["path"], name) for name in (row["diffusers_file"], row["kohya_file"]))
    present = {item.key for folder in FILE_FOLDERS for item in await store.list(folder)}
    return sorted(named - present)

