"""SQL for the retention chores: generations and job events older than the operator keeps them."""

from __future__ import annotations

import aiosqlite


def _cutoff(days: int) -> str:
    return f"-{int(days)} days"


async def old_generation_ids(db: aiosqlite.Connection, days: int) -> list[int]:
    async with db.execute(
        "SELECT id FROM generations WHERE created_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?) ORDER BY id",
        (_cutoff(days),),
    ) as cursor:
        return [row[0] for row in await cursor.fetchall()]


async def delete_generation_row(db: aiosqlite.Connection, generation_id: int) -> None:
    """The row goes first, then its folder, so no row ever points at deleted files."""
    await db.execute("DELETE FROM generations WHERE id = ?", (generation_id,))


async def delete_old_job_events(db: aiosqlite.Connection, days: int) -> int:
    """Events of ended jobs older than `days`; the jobs rows keep each outcome."""
    cursor = await db.execute(
        "DELETE FROM job_events WHERE created_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?) "
        "AND job_id IN (SELECT id FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled'))",
        (_cutoff(days),),
    )
    return cursor.rowcount
