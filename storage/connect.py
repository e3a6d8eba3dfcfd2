"""Opening what an installation is configured with: its database and its file store."""

from __future__ import annotations

import os

from config.settings import Settings
from storage.db import Database, open_database
from storage.files import FileStore, open_files


def file_store(settings: Settings) -> FileStore:
    """PAWTRAIT_FILES_URL's store (the data folder by default), with the AWS variables of the
    environment and `.env` (settings.extra) for a bucket, and PAWTRAIT_CACHE_GIB for its local copies."""
    return open_files(settings.files, settings.data_dir, settings.extra or os.environ, cache_bytes(settings))


def cache_bytes(settings: Settings) -> int:
    return int(settings.cache_gib * 2**30)


async def open_storage(settings: Settings) -> tuple[Database, FileStore]:
    """PAWTRAIT_DATABASE_URL's database (migrated on first use in this process) and the file store."""
    return await open_database(settings.database_url), file_store(settings)
