"""Opening what an installation is configured with: its database and its file store.

Every program opens them here, the bot, the worker and each CLI command alike, and closes
them when the block ends:

    async with open_storage(settings) as (db, store):
        await forget_pet(db, store, pet)

A program that holds them for its whole life (the bot, a worker) awaits `open_storage` and
calls `close()` itself. The file store is made on first use (`storage.files`, or unpacking).
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from functools import cached_property
from types import TracebackType

from config.settings import Settings
from storage.db import Database, open_database
from storage.files import FileStore, open_files


class Storage:
    """PAWTRAIT_DATABASE_URL's database and PAWTRAIT_FILES_URL's file store, closed together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._db: Database | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            raise RuntimeError("the database is not open yet: use `async with open_storage(settings)`")
        return self._db

    @cached_property
    def files(self) -> FileStore:
        """Made on first use: a command that only reads records never sets up a bucket's client."""
        return file_store(self.settings)

    async def open(self) -> Storage:
        """Connect to the database (migrated on first use in this process)."""
        if self._db is None:
            self._db = await open_database(self.settings.database_url)
        return self

    async def close(self) -> None:
        """Close the database's connections; safe when it was never opened."""
        if self._db is not None:
            await self._db.close()
            self._db = None

    def __iter__(self) -> Iterator[Database | FileStore]:
        """`db, store = storage`."""
        return iter((self.db, self.files))

    def __await__(self) -> Generator[None, None, Storage]:
        """`storage = await open_storage(settings)`: opened, for a program that closes it itself."""
        return self.open().__await__()

    async def __aenter__(self) -> Storage:
        return await self.open()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()


def open_storage(settings: Settings) -> Storage:
    """The installation's storage, opened by `async with` or `await`."""
    return Storage(settings)


def file_store(settings: Settings) -> FileStore:
    """PAWTRAIT_FILES_URL's store (the data folder by default), with the AWS variables of the
    environment and `.env` (settings.extra) for a bucket, and PAWTRAIT_CACHE_GIB for its local copies."""
    return open_files(settings.files, settings.data_dir, settings.extra or os.environ, cache_bytes(settings))


def cache_bytes(settings: Settings) -> int:
    return int(settings.cache_gib * 2**30)
