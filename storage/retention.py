"""SQL for the retention chores: generations and job events older than the operator keeps them."""

from __future__ import annotations

import json

from sqlalchemy import delete, select

from storage.db import Queries
from storage.dialects import utc_now_minus
from storage.jobs import ENDED
from storage.schema import generations, job_events, jobs

_DAY_S = 86400


def _cutoff(days: int) -> utc_now_minus:
    """`days` ago on the database's clock."""
    return utc_now_minus(int(days) * _DAY_S)


async def old_generation_ids(db: Queries, days: int) -> list[int]:
    rows = await db.all(select(generations.c.id).where(generations.c.created_at < _cutoff(days)).order_by(generations.c.id))
    return [int(row["id"]) for row in rows]


async def delete_generation_row(db: Queries, generation_id: int) -> list[str]:
    """Delete the row and return the keys of its pictures: the row goes first, then the
    files, so no row ever points at deleted files."""
    files = await db.scalar(delete(generations).where(generations.c.id == generation_id).returning(generations.c.files))
    return json.loads(files) if files else []


async def delete_old_job_events(db: Queries, days: int) -> int:
    """Events of ended jobs older than `days`; the jobs rows keep each outcome."""
    ended = select(jobs.c.id).where(jobs.c.status.in_(ENDED))
    result = await db.execute(
        delete(job_events).where(job_events.c.created_at < _cutoff(days), job_events.c.job_id.in_(ended))
    )
    return result.rowcount
