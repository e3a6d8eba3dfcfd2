"""SQL for the GPU job queue (`jobs`) and what happened to each job (`job_events`).

Any front end (the bot, the CLI) submits, watches and cancels jobs here; the worker
processes claim and finish them here. The queue policy lives in `_NEXT_ORDER`: interactive
generations first, then everything else first come first served. Per-user caps on waiting
jobs are enforced at submit time, so one member cannot fill the queue.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from engine.settings import Settings
from storage.db import transaction

KINDS = ("train", "generate", "class_images")
ACTIVE = ("queued", "running")
ENDED = ("succeeded", "failed", "cancelled")
EVENT_KINDS = (
    "queued", "started", "progress", "checkpoint", "validation", "preview", "finished", "failed", "cancelled",
)

# Which queued job runs next. Generations take seconds and someone is watching the channel,
# so they go before trainings (which take minutes); within a class, the oldest first.
_PRIORITY = "CASE kind WHEN 'generate' THEN 0 ELSE 1 END"
_NEXT_ORDER = f"{_PRIORITY}, id"
# How many recent finished jobs of a kind the ETA averages over.
_ETA_SAMPLE = 20
# Used for an ETA before any job of that kind has finished on this installation.
_DEFAULT_DURATION_S = {"train": 600.0, "generate": 30.0, "class_images": 300.0}

_COLUMNS = (
    "id, kind, status, guild_id, user_id, payload, result, progress, progress_text, run_id, generation_id, "
    "attempts, worker_id, heartbeat_at, cancel_requested, error, created_at, started_at, finished_at"
)
_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


class QueueLimitReached(ValueError):
    """The user already has as many jobs of that kind waiting as allowed; the message says so."""


class JobNotFound(LookupError):
    """No job has that id."""


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    status: str
    guild_id: str
    user_id: str
    payload: dict[str, Any]
    result: dict[str, Any] | None
    progress: float
    progress_text: str | None
    run_id: int | None
    generation_id: int | None
    attempts: int
    worker_id: str | None
    heartbeat_at: str | None
    cancel_requested: bool
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None

    @property
    def ended(self) -> bool:
        return self.status in ENDED


@dataclass(frozen=True)
class JobEvent:
    id: int
    job_id: int
    kind: str
    data: dict[str, Any]
    created_at: str


def _job(row: sqlite3.Row | None) -> Job | None:
    if row is None:
        return None
    values = {key: row[key] for key in row.keys()}
    values["payload"] = json.loads(values["payload"])
    values["result"] = json.loads(values["result"]) if values["result"] is not None else None
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Job(**values)


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def cap_for(settings: Settings, kind: str) -> int:
    """How many jobs of `kind` one user may have waiting (queued) at once."""
    if kind == "generate":
        return settings.max_queued_generations_per_user
    return settings.max_queued_trainings_per_user


async def _one_job(db: aiosqlite.Connection, job_id: int) -> Job:
    job = await get_job(db, job_id)
    if job is None:
        raise JobNotFound(f"there is no job #{job_id}")
    return job


async def get_job(db: aiosqlite.Connection, job_id: int) -> Job | None:
    async with db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)) as cursor:
        return _job(await cursor.fetchone())


async def record_event(db: aiosqlite.Connection, job_id: int, kind: str, data: Mapping[str, Any] | None = None) -> int:
    """Append an event for subscribers; returns its id."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown job event kind {kind!r}")
    cursor = await db.execute(
        "INSERT INTO job_events (job_id, kind, data) VALUES (?, ?, ?)", (job_id, kind, _dumps(data or {}))
    )
    return int(cursor.lastrowid)


async def submit_job(
    db: aiosqlite.Connection,
    settings: Settings,
    kind: str,
    guild_id: str,
    user_id: str,
    payload: Mapping[str, Any],
    run_id: int | None = None,
) -> Job:
    """Queue a job (and its 'queued' event with the queue position).

    Raises QueueLimitReached when the user already has the allowed number of that kind
    waiting (one cap for generations, one for trainings).
    """
    if kind == "class_images":
        # The schema keeps the kind, but a training with prior preservation makes (and shares)
        # its class images itself, so no worker runs such a job on its own.
        raise ValueError("class images are made by the training that needs them; submit a 'train' job")
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}; expected one of {', '.join(KINDS)}")
    cap = cap_for(settings, kind)
    same_cap = ("generate",) if kind == "generate" else ("train", "class_images")
    async with transaction(db):
        async with db.execute(
            f"SELECT count(*) FROM jobs WHERE user_id = ? AND status = 'queued' "
            f"AND kind IN ({', '.join('?' for _ in same_cap)})",
            (user_id, *same_cap),
        ) as cursor:
            waiting = (await cursor.fetchone())[0]
        if waiting >= cap:
            what = "generation" if kind == "generate" else "training"
            raise QueueLimitReached(
                f"you already have {waiting} {what}{'s' if waiting != 1 else ''} waiting (the limit is {cap}); "
                f"wait for {'one of them' if waiting != 1 else 'it'} to start, or cancel one, then try again"
            )
        cursor = await db.execute(
            "INSERT INTO jobs (kind, guild_id, user_id, payload, run_id) VALUES (?, ?, ?, ?, ?)",
            (kind, guild_id, user_id, _dumps(payload), run_id),
        )
        job_id = int(cursor.lastrowid)
        position = await queue_position(db, job_id)
        await record_event(db, job_id, "queued", {"position": position})
    return await _one_job(db, job_id)


async def list_jobs(db: aiosqlite.Connection, guild_id: str | None = None, active_only: bool = True) -> list[Job]:
    """Jobs (of one guild, or all), running first, then in the order they will run, then ended ones newest first."""
    where, args = [], []
    if guild_id is not None:
        where.append("guild_id = ?")
        args.append(guild_id)
    if active_only:
        where.append("status IN ('queued', 'running')")
    sql = f"SELECT {_COLUMNS} FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += (
        " ORDER BY CASE status WHEN 'running' THEN 0 WHEN 'queued' THEN 1 ELSE 2 END, "
        f"CASE WHEN status = 'queued' THEN {_PRIORITY} ELSE 0 END, "
        "CASE WHEN status IN ('queued', 'running') THEN id ELSE -id END"
    )
    async with db.execute(sql, args) as cursor:
        return [_job(row) for row in await cursor.fetchall()]  # type: ignore[misc]


async def queue_position(db: aiosqlite.Connection, job_id: int) -> int | None:
    """1 = runs next, 2 = after that, ...; 0 = running now; None = ended (or no such job)."""
    job = await get_job(db, job_id)
    if job is None or job.ended:
        return None
    if job.status == "running":
        return 0
    async with db.execute(
        "SELECT count(*) FROM jobs AS ahead, jobs AS me WHERE me.id = ? AND ahead.status = 'queued' "
        "AND (CASE ahead.kind WHEN 'generate' THEN 0 ELSE 1 END, ahead.id) "
        "<= (CASE me.kind WHEN 'generate' THEN 0 ELSE 1 END, me.id)",
        (job_id,),
    ) as cursor:
        return int((await cursor.fetchone())[0])


async def average_duration_s(db: aiosqlite.Connection, kind: str) -> float:
    """Mean run time of the last few succeeded jobs of that kind (a default before there are any)."""
    async with db.execute(
        "SELECT avg(seconds) FROM (SELECT (julianday(finished_at) - julianday(started_at)) * 86400 AS seconds "
        "FROM jobs WHERE kind = ? AND status = 'succeeded' AND started_at IS NOT NULL "
        "ORDER BY id DESC LIMIT ?)",
        (kind, _ETA_SAMPLE),
    ) as cursor:
        value = (await cursor.fetchone())[0]
    return float(value) if value is not None else _DEFAULT_DURATION_S[kind]


async def remaining_s(db: aiosqlite.Connection, job: Job) -> float:
    """How long a running job still needs: the training's own ETA if it reported one, else average x (1 - progress)."""
    async with db.execute(
        "SELECT data FROM job_events WHERE job_id = ? AND kind = 'progress' ORDER BY id DESC LIMIT 1", (job.id,)
    ) as cursor:
        row = await cursor.fetchone()
    if row is not None:
        eta = json.loads(row[0]).get("eta_s")
        if isinstance(eta, (int, float)):
            return max(0.0, float(eta))
    return (await average_duration_s(db, job.kind)) * max(0.0, 1.0 - job.progress)


async def estimate_wait_s(db: aiosqlite.Connection, job_id: int) -> float | None:
    """Seconds until the job has finished, from recent averages per kind; None once it has ended.

    A queued generation waits only for the generations ahead of it (the worker serves it
    between two training steps); a queued training waits for everything ahead of it.
    Assumes one worker: with several the real wait is shorter.
    """
    job = await get_job(db, job_id)
    if job is None or job.ended:
        return None
    if job.status == "running":
        return await remaining_s(db, job)
    ahead_kinds = ("generate",) if job.kind == "generate" else KINDS
    total = await average_duration_s(db, job.kind)
    async with db.execute(
        f"SELECT {_COLUMNS} FROM jobs WHERE status = 'running' AND kind IN ({', '.join('?' for _ in ahead_kinds)})",
        ahead_kinds,
    ) as cursor:
        for row in await cursor.fetchall():
            total += await remaining_s(db, _job(row))  # type: ignore[arg-type]
    async with db.execute(
        "SELECT ahead.kind, count(*) FROM jobs AS ahead, jobs AS me WHERE me.id = ? AND ahead.status = 'queued' "
        "AND (CASE ahead.kind WHEN 'generate' THEN 0 ELSE 1 END, ahead.id) "
        "< (CASE me.kind WHEN 'generate' THEN 0 ELSE 1 END, me.id) GROUP BY ahead.kind",
        (job_id,),
    ) as cursor:
        for kind, count in await cursor.fetchall():
            total += count * await average_duration_s(db, kind)
    return total


async def request_cancel(db: aiosqlite.Connection, job_id: int) -> Job:
    """Cancel a job: a queued one ends at once; a running one is flagged and its worker stops it
    at the next step boundary (a training keeps its checkpoints). An ended job is left as it is."""
    async with transaction(db):
        job = await _one_job(db, job_id)
        if job.status == "queued":
            await db.execute(
                f"UPDATE jobs SET status = 'cancelled', cancel_requested = 1, finished_at = {_NOW} WHERE id = ?",
                (job_id,),
            )
            await record_event(db, job_id, "cancelled", {"while": "queued"})
            if job.run_id is not None:
                # The run never started: it ends with its job rather than waiting forever.
                await db.execute(
                    f"UPDATE training_runs SET status = 'cancelled', finished_at = {_NOW} "
                    "WHERE id = ? AND status = 'queued'",
                    (job.run_id,),
                )
        elif job.status == "running":
            await db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
    return await _one_job(db, job_id)


async def cancel_requested(db: aiosqlite.Connection, job_id: int) -> bool:
    async with db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)) as cursor:
        row = await cursor.fetchone()
    return bool(row and row[0])


async def events_after(
    db: aiosqlite.Connection, after_id: int, job_ids: Sequence[int] | None = None, limit: int = 500
) -> list[JobEvent]:
    """Events newer than `after_id` (of those jobs, or all), oldest first. Poll with the last id seen."""
    sql = "SELECT id, job_id, kind, data, created_at FROM job_events WHERE id > ?"
    args: list[Any] = [after_id]
    if job_ids is not None:
        if not job_ids:
            return []
        sql += f" AND job_id IN ({', '.join('?' for _ in job_ids)})"
        args.extend(job_ids)
    async with db.execute(sql + " ORDER BY id LIMIT ?", (*args, limit)) as cursor:
        rows = await cursor.fetchall()
    return [JobEvent(row[0], row[1], row[2], json.loads(row[3]), row[4]) for row in rows]


async def last_event_id(db: aiosqlite.Connection) -> int:
    """Where a new subscriber starts polling from (it reads current state from the jobs rows)."""
    async with db.execute("SELECT coalesce(max(id), 0) FROM job_events") as cursor:
        return int((await cursor.fetchone())[0])


# --- For workers -------------------------------------------------------------------------


async def claim_next_job(db: aiosqlite.Connection, worker_id: str, kinds: Iterable[str] = KINDS) -> Job | None:
    """Atomically take the next queued job (by the queue policy) for this worker, or None.

    BEGIN IMMEDIATE holds the database's write lock from the SELECT to the UPDATE, so two
    workers can never take the same job.
    """
    kinds = tuple(kinds)
    async with transaction(db):
        async with db.execute(
            f"SELECT id FROM jobs WHERE status = 'queued' AND kind IN ({', '.join('?' for _ in kinds)}) "
            f"ORDER BY {_NEXT_ORDER} LIMIT 1",
            kinds,
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        job_id = row[0]
        await db.execute(
            f"UPDATE jobs SET status = 'running', worker_id = ?, attempts = attempts + 1, "
            f"started_at = {_NOW}, heartbeat_at = {_NOW}, progress = 0, error = NULL WHERE id = ?",
            (worker_id, job_id),
        )
        job = await _one_job(db, job_id)
        await record_event(db, job_id, "started", {"worker": worker_id, "attempt": job.attempts})
    return job


async def has_queued(db: aiosqlite.Connection, kind: str) -> bool:
    """Cheap check (no write lock) used between training steps."""
    async with db.execute("SELECT 1 FROM jobs WHERE status = 'queued' AND kind = ? LIMIT 1", (kind,)) as cursor:
        return await cursor.fetchone() is not None


async def heartbeat(db: aiosqlite.Connection, worker_id: str) -> None:
    await db.execute(f"UPDATE jobs SET heartbeat_at = {_NOW} WHERE status = 'running' AND worker_id = ?", (worker_id,))


async def set_progress(
    db: aiosqlite.Connection, job_id: int, progress: float, text: str | None, event: Mapping[str, Any] | None = None
) -> None:
    """Update the job row (what a late subscriber reads) and, if given, append a progress event."""
    await db.execute(
        "UPDATE jobs SET progress = ?, progress_text = ? WHERE id = ?", (min(1.0, max(0.0, progress)), text, job_id)
    )
    if event is not None:
        await record_event(db, job_id, "progress", event)


async def set_links(db: aiosqlite.Connection, job_id: int, run_id: int | None = None, generation_id: int | None = None) -> None:
    """Point the job at the training run or generation it produced."""
    await db.execute(
        "UPDATE jobs SET run_id = coalesce(?, run_id), generation_id = coalesce(?, generation_id) WHERE id = ?",
        (run_id, generation_id, job_id),
    )


async def finish_job(
    db: aiosqlite.Connection,
    job_id: int,
    status: str,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> Job:
    """End a running job as succeeded, failed or cancelled, with its 'finished'/'failed'/'cancelled' event."""
    if status not in ENDED:
        raise ValueError(f"a job ends as one of {', '.join(ENDED)}, not {status!r}")
    event = {"succeeded": "finished", "failed": "failed", "cancelled": "cancelled"}[status]
    async with transaction(db):
        await db.execute(
            f"UPDATE jobs SET status = ?, result = ?, error = ?, finished_at = {_NOW}, "
            f"progress = CASE WHEN ? = 'succeeded' THEN 1 ELSE progress END WHERE id = ?",
            (status, _dumps(result) if result is not None else None, error, status, job_id),
        )
        data: dict[str, Any] = dict(result or {})
        if error:
            data["error"] = error
        await record_event(db, job_id, event, data)
    return await _one_job(db, job_id)


async def running_jobs(db: aiosqlite.Connection) -> list[Job]:
    async with db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE status = 'running' ORDER BY id") as cursor:
        return [_job(row) for row in await cursor.fetchall()]  # type: ignore[misc]


async def heartbeat_age_s(db: aiosqlite.Connection, job_id: int) -> float | None:
    async with db.execute(
        "SELECT (julianday('now') - julianday(heartbeat_at)) * 86400 FROM jobs WHERE id = ?", (job_id,)
    ) as cursor:
        row = await cursor.fetchone()
    return None if row is None or row[0] is None else float(row[0])


async def requeue_or_fail(
    db: aiosqlite.Connection, job_id: int, worker_id: str | None, max_attempts: int, why: str
) -> Job:
    """A running job whose worker is gone: queue it again, or fail it once it has used up its tries.

    Only acts if the job is still running on that worker, so two recoverers cannot both act.
    """
    async with transaction(db):
        job = await _one_job(db, job_id)
        if job.status != "running" or job.worker_id != worker_id:
            return job
        if job.cancel_requested:
            await db.execute(f"UPDATE jobs SET status = 'cancelled', finished_at = {_NOW} WHERE id = ?", (job_id,))
            await record_event(db, job_id, "cancelled", {"while": "running", "reason": why})
        elif job.attempts >= max_attempts:
            error = (
                f"gave up after {job.attempts} tries: {why} each time. This job may be crashing the worker "
                f"(for example running out of memory); try smaller settings, or ask the operator to check the worker log"
            )
            await db.execute(
                f"UPDATE jobs SET status = 'failed', error = ?, finished_at = {_NOW} WHERE id = ?", (error, job_id)
            )
            await record_event(db, job_id, "failed", {"error": error})
        else:
            await db.execute(
                "UPDATE jobs SET status = 'queued', worker_id = NULL, heartbeat_at = NULL, error = ? WHERE id = ?",
                (f"requeued: {why}", job_id),
            )
            position = await queue_position(db, job_id)
            await record_event(db, job_id, "queued", {"position": position, "requeued": why})
    return await _one_job(db, job_id)


async def release_job(db: aiosqlite.Connection, job_id: int, worker_id: str) -> Job:
    """A worker that is being stopped hands its running job back to the queue.

    The attempt is not counted: stopping the worker is not the job's fault. A training
    resumes from its latest checkpoint when it runs again.
    """
    async with transaction(db):
        job = await _one_job(db, job_id)
        if job.status != "running" or job.worker_id != worker_id:
            return job
        await db.execute(
            "UPDATE jobs SET status = 'queued', worker_id = NULL, heartbeat_at = NULL, "
            "attempts = max(0, attempts - 1) WHERE id = ?",
            (job_id,),
        )
        position = await queue_position(db, job_id)
        await record_event(db, job_id, "queued", {"position": position, "requeued": "the worker was stopped"})
    return await _one_job(db, job_id)

