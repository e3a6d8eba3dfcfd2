"""Housekeeping the scheduler runs beside the GPU work: temporary files and retention."""

from __future__ import annotations

import logging
import time

import aiosqlite

from storage import retention
from storage.files import DataDir, remove_tree

log = logging.getLogger(__name__)

# Previews are shown while a generation runs and are useless minutes later; an hour
# leaves room for a slow front end without letting data/tmp grow without bound.
TMP_MAX_AGE_S = 3600.0
# Per-step events are only needed while someone watches a job.
KEEP_EVENTS_DAYS = 7


def clean_tmp(data: DataDir, max_age_s: float = TMP_MAX_AGE_S) -> int:
    """Delete files under data/tmp older than `max_age_s`; returns how many."""
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


async def prune_generations(db: aiosqlite.Connection, data: DataDir, days: int) -> int:
    """Delete generations (rows and images) older than `days`; 0 days keeps everything."""
    if days <= 0:
        return 0
    ids = await retention.old_generation_ids(db, days)
    for generation_id in ids:
        await retention.delete_generation_row(db, generation_id)
        remove_tree(data.generation_dir(generation_id))
    if ids:
        log.info("deleted %d generations older than %d days", len(ids), days)
    return len(ids)


async def prune_events(db: aiosqlite.Connection) -> int:
    return await retention.delete_old_job_events(db, KEEP_EVENTS_DAYS)
