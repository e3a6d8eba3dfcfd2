"""Opening the SQLite database and bringing its schema up to date.

Migrations are plain SQL files `migrations/V<n>__<what>.sql`, applied in order at start-up;
`PRAGMA user_version` records the last one applied, so a database written by an older
version upgrades in place.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import aiosqlite

MIGRATION_NAME = re.compile(r"^V(\d+)__\w+\.sql$")


def migrations() -> list[tuple[int, str]]:
    """(version, SQL) for every migration shipped with the package, in order."""
    found = []
    for entry in resources.files("storage").joinpath("migrations").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [version for version, _ in found]
    # A gap would be skipped for good by a database already past it: numbers must run 1, 2, 3, ...
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migrations must be numbered 1, 2, 3, ... without gaps; found {versions}")
    return found


def latest_version() -> int:
    return len(migrations())


async def schema_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0])


async def migrate(db: aiosqlite.Connection, target: int | None = None) -> int:
    """Apply the migrations the database lacks (up to `target`); returns the new version."""
    current = await schema_version(db)
    for version, sql in migrations():
        if version <= current or (target is not None and version > target):
            continue
        # One script per migration, in one transaction with its version bump: all or nothing.
        await db.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;")
        current = version
    return current


async def connect(path: Path, *, migrate_to: int | None = None) -> aiosqlite.Connection:
    """Open (creating if needed) the database at `path`, in WAL mode with foreign keys on.

    Several processes (the bot, its workers, the CLI) share the file, so writers wait for
    each other (busy timeout) instead of failing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path, isolation_level=None, timeout=30)
    db.row_factory = aiosqlite.Row
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute("PRAGMA foreign_keys = ON")
    await db.execute("PRAGMA busy_timeout = 30000")
    await db.execute("PRAGMA synchronous = NORMAL")
    await migrate(db, migrate_to)
    return db


@asynccontextmanager
async def transaction(db: aiosqlite.Connection) -> AsyncIterator[aiosqlite.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back if the block raises.

    IMMEDIATE takes the write lock up front, so two processes claiming the same queued
    job cannot both succeed.
    """
    await db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    await db.execute("COMMIT")
