"""SQL for the audit log: one line per member action and per screening verdict.

Front ends record a line for every command and button a member uses (bot/audit_log.py);
the worker records a line per picture verdict. Lines outlive the pets and pictures they
name (no foreign keys) until PAWTRAIT_AUDIT_DAYS prunes them (engine/gpu/worker/chores.py).

For a screening verdict on a picture, call
    record_audit(db, guild_id, user_id, "picture screening", "flagged", detail=..., job_id=..., generation_id=...)
with `verdict` a short word ("passed", "flagged", "withheld") and `detail` what decided it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select

from storage.db import Queries
from storage.dialects import iso, utc_now, utc_now_minus
from storage.schema import audit_log

_DAY_S = 86400
MAX_TEXT = 1000  # a prompt or detail is cut here: the log shows what was asked, not a novel


@dataclass(frozen=True)
class AuditLine:
    id: int
    guild_id: str
    user_id: str
    created_at: str
    command: str  # e.g. 'imagine', 'imagine reroll', 'settings deny', 'picture screening'
    verdict: str  # e.g. 'done', 'refused', 'denied', 'prompt refused (explicit)', 'flagged'
    detail: str | None = None  # why, in the words the member was shown
    prompt: str | None = None
    pet: str | None = None  # the pet's name at the time (the line outlives /forget)
    checkpoint_id: int | None = None
    seed: int | None = None
    job_id: int | None = None
    generation_id: int | None = None


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:MAX_TEXT]


async def record_audit(
    db: Queries,
    guild_id: str,
    user_id: str,
    command: str,
    verdict: str,
    *,
    detail: str | None = None,
    prompt: str | None = None,
    pet: str | None = None,
    checkpoint_id: int | None = None,
    seed: int | None = None,
    job_id: int | None = None,
    generation_id: int | None = None,
    at: datetime | None = None,
) -> int:
    """Add one line; returns its id. `at`: when the member acted (Discord's time of the
    interaction), so lines keep the members' order even when a slow command's line is
    written after a quicker later one's; None: now, on the database's clock."""
    return int(await db.scalar(
        insert(audit_log).values(
            guild_id=guild_id, user_id=user_id, created_at=iso(at) if at else utc_now(), command=command, verdict=verdict,
            detail=_cut(detail), prompt=_cut(prompt), pet=pet, checkpoint_id=checkpoint_id, seed=seed,
            job_id=job_id, generation_id=generation_id,
        ).returning(audit_log.c.id)
    ))


async def audit_lines(
    db: Queries, guild_id: str | None, *, user_id: str | None = None, pet: str | None = None, limit: int = 20
) -> list[AuditLine]:
    """A server's lines (None: every server's), newest first, optionally of one member or one pet (by name, any case)."""
    statement = select(audit_log)
    if guild_id is not None:
        statement = statement.where(audit_log.c.guild_id == guild_id)
    if user_id is not None:
        statement = statement.where(audit_log.c.user_id == user_id)
    if pet is not None:
        statement = statement.where(func.lower(audit_log.c.pet) == pet.strip().lower())
    rows = await db.all(statement.order_by(audit_log.c.created_at.desc(), audit_log.c.id.desc()).limit(limit))
    return [AuditLine(**row) for row in rows]


async def audit_lines_of_job(db: Queries, guild_id: str, job_id: int) -> list[AuditLine]:
    """The lines of a job, oldest first: the command that queued it (e.g. the /imagine that
    painted a picture), then the worker's safety verdict on what it made. Job ids are never
    handed out twice (migration 0004), so every line is this job's."""
    rows = await db.all(
        select(audit_log).where(audit_log.c.guild_id == guild_id, audit_log.c.job_id == job_id).order_by(audit_log.c.id)
    )
    return [AuditLine(**row) for row in rows]


async def has_audit_line(db: Queries, guild_id: str, user_id: str, command: str, verdict: str, generation_id: int) -> bool:
    """Whether the member already did `command` on this picture with this outcome (e.g. reported it
    to the moderators); lines older than PAWTRAIT_AUDIT_DAYS are gone and no longer count."""
    found = await db.scalar(
        select(audit_log.c.id).where(
            audit_log.c.generation_id == generation_id, audit_log.c.guild_id == guild_id,
            audit_log.c.user_id == user_id, audit_log.c.command == command, audit_log.c.verdict == verdict,
        ).limit(1)
    )
    return found is not None


async def delete_old_audit_lines(db: Queries, days: int) -> int:
    """Lines older than `days` on the database's clock; returns how many went."""
    result = await db.execute(delete(audit_log).where(audit_log.c.created_at < utc_now_minus(int(days) * _DAY_S)))
    return result.rowcount
