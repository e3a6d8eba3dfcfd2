"""Housekeeping the scheduler runs beside the GPU work: temporary files, retention, orphans, stale copies."""

from __future__ import annotations

import logging
import time

from storage import audit, keys, retention
from storage.db import Queries
from storage.files import DataDir, FileStore
from storage.pet_deletion import sweep_orphans

log = logging.getLogger(__name__)

# Previews are shown while a generation runs and are useless minutes later; an hour
# leaves room for a slow front end without letting tmp/ grow without bound.
TMP_MAX_AGE_S = 3600.0
# Per-step events are only needed while someone watches a job.
KEEP_EVENTS_DAYS = 7


def clean_local_tmp(data: DataDir, max_age_s: float = TMP_MAX_AGE_S) -> int:
    """Delete files under this host's data/tmp older than `max_age_s` (staging left by a crash); returns how many."""
    cutoff = time.time() - max_age_s
    removed = 0
    for path in data.tmp_dir().rglob("*"):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue  # another worker's chore got there first
    return removed


async def clean_store_tmp(store: FileStore, max_age_s: float = TMP_MAX_AGE_S) -> int:
    """Delete previews and other temporary objects older than `max_age_s` from the file store."""
    if store.is_local:
        return 0  # the same folder as data/tmp: clean_local_tmp covers it
    cutoff = time.time() - max_age_s
    old = [item.key for item in await store.list(keys.TMP) if item.modified < cutoff]
    await store.delete(old)
    return len(old)


async def prune_generations(db: Queries, store: FileStore, days: int) -> int:
    """Delete generations (rows, then pictures) older than `days`; 0 days keeps everything."""
    if days <= 0:
        return 0
    ids = await retention.old_generation_ids(db, days)
    for generation_id in ids:
        await store.delete(await retention.delete_generation_row(db, generation_id))
    if ids:
        log.info("deleted %d generations older than %d days", len(ids), days)
    return len(ids)


async def prune_events(db: Queries) -> int:
    return await retention.delete_old_job_events(db, KEEP_EVENTS_DAYS)


async def sweep(db: Queries, store: FileStore) -> int:
    removed = await sweep_orphans(db, store)
    if removed:
        log.info("removed %d files no record points at (left by a crash)", len(removed))
    return len(removed)


async def drop_deleted_copies(store: FileStore) -> int:
    """Remove this host's cached copies of objects any host deleted (a `/forget` on the bot's host, retention)."""
    dropped = await store.drop_deleted_copies()
    if dropped:
        log.info("removed %d local copies of deleted files", len(dropped))
    return len(dropped)


async def prune_audit(db: Queries, days: int) -> int:
    """Delete audit lines older than `days` (PAWTRAIT_AUDIT_DAYS); 0 days keeps everything."""
    if days <= 0:
        return 0
    removed = await audit.delete_old_audit_lines(db, days)
    if removed:
        log.info("deleted %d audit lines older than %d days", removed, days)
    return removed
