"""The GPU job queue (`jobs`) and what happened to each job (`job_events`): the one place
that writes the queue's SQL, for SQLite and PostgreSQL alike.

Front ends (the bot, the CLI) submit, watch and cancel jobs; workers on any host claim,
heartbeat and finish them. The policy: by the kinds' priorities (storage.job_kinds), then
first come first served; per-member caps on waiting jobs, held under a per-member lock so
two bot processes submitting at once cannot both squeeze past the cap.

A claim is a lease: the job row records the worker and the attempt number, the worker
heartbeats it, and every write a worker makes about its job is fenced on (worker, attempt)
(`JobLease`, storage.fencing): once the job was requeued and claimed elsewhere, a frozen
worker that wakes up changes nothing. Staleness is judged on the database's clock.

The records it reads and writes (Job, JobEvent, JobLease, its errors) are storage.job_records';
payloads, results and event data are JSON here, read and written through each kind's
contract (engine.usecases.jobs).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import and_, case, func, insert, literal, select, tuple_, update
from sqlalchemy.sql import ColumnElement

from config.settings import Settings
from storage.db import Queries, retry_on_disconnect
from storage.dialects import Notify, current_tx, event_horizon, seconds_between, utc_now, utc_now_minus
from storage.job_kinds import queue_kind, queue_kinds
from storage.job_records import (
    ACTIVE,
    ENDED,
    EVENT_KINDS,
    START,
    EventPosition,
    Job,
    JobEvent,
    JobLease,
    JobNotFound,
    LeaseLost,
    QueueLimitReached,
    RunningJob,
    job_from_row,
)
from storage.schema import job_events, jobs

# Idle workers LISTEN here (PostgreSQL); what wakes them: a job was queued or requeued.
WAKE_CHANNEL = "pawtrait_jobs"
# How many recent finished jobs of a kind the ETA averages over.
_ETA_SAMPLE = 20

# What a front end records about a new job in the transaction that queues it: (its handle, the job's id).
WithJob = Callable[[Queries, int], Awaitable[object]]


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _priority(column: ColumnElement[str] = jobs.c.kind) -> ColumnElement[int]:
    kinds = queue_kinds()
    return case({kind.name: kind.priority for kind in kinds.values()}, value=column, else_=len(kinds))


async def _one_job(db: Queries, job_id: int) -> Job:
    job = await get_job(db, job_id)
    if job is None:
        raise JobNotFound(f"there is no job #{job_id}")
    return job


async def get_job(db: Queries, job_id: int) -> Job | None:
    return job_from_row(await db.one(select(jobs).where(jobs.c.id == job_id)))


async def record_event(db: Queries, job_id: int, kind: str, data: Mapping[str, Any] | None = None) -> int:
    """Append an event for subscribers; returns its id. A worker's events go through its fenced database."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown job event kind {kind!r}")
    statement = (
        insert(job_events)
        .values(job_id=job_id, kind=kind, data=_dumps(data or {}), created_at=utc_now(), tx=current_tx())
        .returning(job_events.c.id)
    )
    return int(await db.scalar(statement))


async def submit_job(
    db: Queries,
    settings: Settings,
    kind: str,
    guild_id: str,
    user_id: str,
    payload: Mapping[str, Any],
    run_id: int | None = None,
    also: WithJob | None = None,
) -> Job:
    """Queue a job (and its 'queued' event with the queue position), and wake idle workers.

    `also(tx, job_id)` writes what belongs with the job (the bot: where it is shown) in the same
    transaction: a worker may claim the job, and write its events, the moment it commits, so
    anything written after could come too late for them. Keep it to SQL: the transaction holds
    the database's write lock (SQLite) until it returns.

    Raises QueueLimitReached when the member already has the allowed number of that kind waiting.
    """
    spec = queue_kind(kind)
    cap = spec.limit(settings)
    async with db.transaction() as tx:
        await tx.lock(f"submit:{user_id}")
        waiting = await tx.scalar(
            select(func.count()).select_from(jobs).where(
                jobs.c.user_id == user_id, jobs.c.status == "queued", jobs.c.kind == kind
            )
        )
        if waiting >= cap:
            raise QueueLimitReached(
                f"You already have {waiting} {spec.plural(waiting)} waiting (the limit is {cap}); "
                f"wait for {'one of them' if waiting != 1 else 'it'} to start, or cancel one, then try again."
            )
        job_id = await tx.scalar(
            insert(jobs)
            .values(
                kind=kind, status="queued", guild_id=guild_id, user_id=user_id, payload=_dumps(payload),
                run_id=run_id, progress=0, attempts=0, cancel_requested=0, created_at=utc_now(),
            )
            .returning(jobs.c.id)
        )
        if also is not None:
            await also(tx, job_id)
        position = await queue_position(tx, job_id)
        await record_event(tx, job_id, "queued", {"position": position})
        await tx.execute(Notify(WAKE_CHANNEL))
    return await _one_job(db, job_id)


async def list_jobs(db: Queries, guild_id: str | None = None, active_only: bool = True) -> list[Job]:
    """Jobs (of one guild, or all): running first, then in the order they will run, then ended ones newest first."""
    statement = select(jobs)
    if guild_id is not None:
        statement = statement.where(jobs.c.guild_id == guild_id)
    if active_only:
        statement = statement.where(jobs.c.status.in_(ACTIVE))
    active = jobs.c.status.in_(ACTIVE)
    statement = statement.order_by(
        case({"running": 0, "queued": 1}, value=jobs.c.status, else_=2),
        case((jobs.c.status == "queued", _priority()), else_=0),
        case((active, jobs.c.id), else_=-jobs.c.id),
    )
    return [job_from_row(row) for row in await db.all(statement)]  # type: ignore[misc]


def _ahead_of(me: Any, ahead: Any, inclusive: bool) -> ColumnElement[bool]:
    """`ahead` runs before `me` by the queue policy (priority, then id)."""
    mine = tuple_(_priority(me.c.kind), me.c.id)
    theirs = tuple_(_priority(ahead.c.kind), ahead.c.id)
    return theirs <= mine if inclusive else theirs < mine


async def queue_position(db: Queries, job_id: int) -> int | None:
    """1 = runs next, 2 = after that, ...; 0 = running now; None = ended (or no such job)."""
    job = await get_job(db, job_id)
    if job is None or job.ended:
        return None
    if job.status == "running":
        return 0
    me, ahead = jobs.alias("me"), jobs.alias("ahead")
    count = await db.scalar(
        select(func.count()).select_from(me.join(ahead, literal(True))).where(
            me.c.id == job_id, ahead.c.status == "queued", _ahead_of(me, ahead, inclusive=True)
        )
    )
    return int(count)


async def average_duration_s(db: Queries, kind: str) -> float:
    """Mean run time of the last few succeeded jobs of that kind (the kind's guess before there are any)."""
    recent = (
        select(seconds_between(jobs.c.started_at, jobs.c.finished_at).label("seconds"))
        .where(jobs.c.kind == kind, jobs.c.status == "succeeded", jobs.c.started_at.is_not(None))
        .order_by(jobs.c.id.desc())
        .limit(_ETA_SAMPLE)
        .subquery()
    )
    value = await db.scalar(select(func.avg(recent.c.seconds)))
    return float(value) if value is not None else queue_kind(kind).typical_s


async def remaining_s(db: Queries, job: Job) -> float:
    """How long a running job still needs: the training's own ETA if it reported one, else average x (1 - progress)."""
    data = await db.scalar(
        select(job_events.c.data)
        .where(job_events.c.job_id == job.id, job_events.c.kind == "progress")
        .order_by(job_events.c.id.desc())
        .limit(1)
    )
    if data is not None:
        eta = json.loads(data).get("eta_s")
        if isinstance(eta, (int, float)):
            return max(0.0, float(eta))
    return (await average_duration_s(db, job.kind)) * max(0.0, 1.0 - job.progress)


async def estimate_wait_s(db: Queries, job_id: int) -> float | None:
    """Seconds until the job has finished, from recent averages per kind; None once it has ended.

    A queued generation waits only for the generations ahead of it (a training serves it
    between two steps); a queued training waits for everything ahead of it. Assumes one
    worker: with several the real wait is shorter.
    """
    job = await get_job(db, job_id)
    if job is None or job.ended:
        return None
    if job.status == "running":
        return await remaining_s(db, job)
    ahead_kinds = [job.kind] if queue_kind(job.kind).served_between_steps else list(queue_kinds())
    total = await average_duration_s(db, job.kind)
    for row in await db.all(select(jobs).where(jobs.c.status == "running", jobs.c.kind.in_(ahead_kinds))):
        total += await remaining_s(db, job_from_row(row))  # type: ignore[arg-type]
    me, ahead = jobs.alias("me"), jobs.alias("ahead")
    counts = await db.all(
        select(ahead.c.kind, func.count().label("count"))
        .select_from(me.join(ahead, literal(True)))
        .where(me.c.id == job_id, ahead.c.status == "queued", _ahead_of(me, ahead, inclusive=False))
        .group_by(ahead.c.kind)
    )
    for row in counts:
        total += row["count"] * await average_duration_s(db, row["kind"])
    return total


async def request_cancel(db: Queries, job_id: int) -> Job:
    """Cancel a job: a queued one ends at once; a running one is flagged and its worker, woken by
    the notification, stops it at the next step boundary (a training keeps its checkpoints). An
    ended job is left as it is."""
    from storage.runs import cancel_unstarted_run

    async with db.transaction() as tx:
        job = await _locked_job(tx, job_id)
        if job.status == "queued":
            await tx.execute(
                update(jobs).where(jobs.c.id == job_id)
                .values(status="cancelled", cancel_requested=1, finished_at=utc_now())
            )
            await record_event(tx, job_id, "cancelled", {"while": "queued"})
            if job.run_id is not None:
                await cancel_unstarted_run(tx, job.run_id)  # it ends with its job rather than waiting forever
        elif job.status == "running":
            await tx.execute(update(jobs).where(jobs.c.id == job_id).values(cancel_requested=1))
            await tx.execute(Notify(WAKE_CHANNEL))
    return await _one_job(db, job_id)


async def cancels_among(db: Queries, job_ids: Collection[int]) -> frozenset[int]:
    """Which of these jobs were asked to stop (one look for all a worker runs)."""
    if not job_ids:
        return frozenset()
    rows = await db.all(select(jobs.c.id).where(jobs.c.id.in_(list(job_ids)), jobs.c.cancel_requested != 0))
    return frozenset(int(row["id"]) for row in rows)


async def events_after(
    db: Queries, after: EventPosition, job_ids: Sequence[int] | None = None, limit: int = 500
) -> list[JobEvent]:
    """Committed events past `after` (of those jobs, or all), in commit order. Poll with the last position seen."""
    if job_ids is not None and not job_ids:
        return []
    order = tuple_(job_events.c.tx, job_events.c.id)
    statement = select(job_events).where(order > tuple_(literal(after.tx), literal(after.id)),
                                         job_events.c.tx < event_horizon())
    if job_ids is not None:
        statement = statement.where(job_events.c.job_id.in_(list(job_ids)))
    rows = await db.all(statement.order_by(job_events.c.tx, job_events.c.id).limit(limit))
    return [
        JobEvent(row["id"], row["job_id"], row["kind"], json.loads(row["data"]), row["created_at"], row["tx"])
        for row in rows
    ]


async def last_event_position(db: Queries) -> EventPosition:
    """Where a new subscriber starts (it reads current state from the jobs rows)."""
    row = await db.one(
        select(job_events.c.tx, job_events.c.id)
        .where(job_events.c.tx < event_horizon())
        .order_by(job_events.c.tx.desc(), job_events.c.id.desc())
        .limit(1)
    )
    return START if row is None else EventPosition(row["tx"], row["id"])


# --- For workers -------------------------------------------------------------------------


@retry_on_disconnect
async def claim_next_job(
    db: Queries, worker_id: str, kinds: Iterable[str] | None = None, *, running: Collection[int] | None = None
) -> Job | None:
    """Take the next queued job (by the queue policy) of those kinds (default: any) for this worker, or None.

    PostgreSQL: FOR UPDATE SKIP LOCKED, so workers on many hosts claim different jobs
    without waiting for each other. SQLite: the transaction holds the write lock from its
    first statement (BEGIN IMMEDIATE), so two workers can never take the same job.

    A claim whose COMMIT failed (the connection dropped during it) may have been made or
    not: the worker cannot know whether it holds that job, and a job it holds but never
    runs would stay 'running' until it restarts. A worker passes `running`, the jobs it
    runs now; any other job running under its id is such a lost claim and goes back to the
    queue first, in the same transaction, without counting the attempt.
    """
    next_id = (
        select(jobs.c.id)
        .where(jobs.c.status == "queued", jobs.c.kind.in_(list(kinds or queue_kinds())))
        .order_by(_priority(), jobs.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    async with db.transaction() as tx:
        if running is not None:
            await _give_back_lost_claims(tx, worker_id, running)
        row = await tx.one(
            update(jobs)
            .where(jobs.c.id == next_id)
            .values(
                status="running", worker_id=worker_id, attempts=jobs.c.attempts + 1, started_at=utc_now(),
                heartbeat_at=utc_now(), progress=0, error=None,
            )
            .returning(*jobs.c)
        )
        job = job_from_row(row)
        if job is not None:
            await record_event(tx, job.id, "started", {"worker": worker_id, "attempt": job.attempts})
    return job


async def _give_back_lost_claims(tx: Queries, worker_id: str, running: Collection[int]) -> None:
    lost = await tx.all(
        select(jobs.c.id)
        .where(jobs.c.worker_id == worker_id, jobs.c.status == "running", jobs.c.id.not_in(list(running)))
        .order_by(jobs.c.id)
        .with_for_update()
    )
    for row in lost:
        await _requeue_uncounted(tx, int(row["id"]), "the worker lost the answer to its claim")


async def has_queued(db: Queries, kinds: Iterable[str] | None = None) -> bool:
    """Cheap check (no lock) used between training steps and by idle workers; default: jobs of any kind."""
    return await db.scalar(
        select(literal(1)).where(jobs.c.status == "queued", jobs.c.kind.in_(list(kinds or queue_kinds()))).limit(1)
    ) is not None


def _held(lease: JobLease) -> ColumnElement[bool]:
    return and_(
        jobs.c.id == lease.job_id,
        jobs.c.worker_id == lease.worker_id,
        jobs.c.attempts == lease.attempt,
        jobs.c.status == "running",
    )


async def heartbeat(db: Queries, worker_id: str, job_ids: Iterable[int]) -> set[int]:
    """Renew this worker's leases on the jobs it is running, on the database's clock; returns
    those still its own. A claim it does not know of (its commit's answer lost with the
    connection) is not renewed; the worker's next claim gives that job back."""
    rows = await db.all(
        update(jobs)
        .where(jobs.c.worker_id == worker_id, jobs.c.status == "running", jobs.c.id.in_(list(job_ids)))
        .values(heartbeat_at=utc_now())
        .returning(jobs.c.id)
    )
    return {int(row["id"]) for row in rows}


async def check_lease(db: Queries, lease: JobLease) -> None:
    """Raise LeaseLost unless the lease still holds; inside a transaction on PostgreSQL the job
    row stays locked until it ends, so nobody can requeue the job between this check and the write."""
    held = await db.scalar(select(jobs.c.id).where(_held(lease)).with_for_update())
    if held is None:
        raise LeaseLost.of(lease)


async def _update_held(db: Queries, lease: JobLease, **values: Any) -> Job:
    """UPDATE the job only while the lease holds (LeaseLost otherwise); returns the row as written.

    One statement checks and writes: on PostgreSQL the row stays locked until the transaction
    ends, so nobody can requeue the job between this write and the rest of the transaction.
    """
    row = await db.one(update(jobs).where(_held(lease)).values(**values).returning(*jobs.c))
    if row is None:
        raise LeaseLost.of(lease)
    return job_from_row(row)  # type: ignore[return-value]


@retry_on_disconnect
async def set_progress(
    db: Queries, lease: JobLease, progress: float, text: str | None, event: Mapping[str, Any] | None = None
) -> None:
    """Update the job row (what a late subscriber reads) and, if given, append a progress event."""
    async with db.transaction() as tx:
        await _update_held(tx, lease, progress=min(1.0, max(0.0, progress)), progress_text=text)
        if event is not None:
            await record_event(tx, lease.job_id, "progress", event)


@retry_on_disconnect
async def record_job_event(db: Queries, lease: JobLease, kind: str, data: Mapping[str, Any] | None = None) -> int:
    """A worker's event about its job: written only while its lease holds."""
    async with db.transaction() as tx:
        await check_lease(tx, lease)
        return await record_event(tx, lease.job_id, kind, data)


@retry_on_disconnect
async def set_links(db: Queries, lease: JobLease, run_id: int | None = None, generation_id: int | None = None) -> None:
    """Point the job at the training run or generation it produced."""
    await _update_held(
        db, lease, run_id=func.coalesce(run_id, jobs.c.run_id),
        generation_id=func.coalesce(generation_id, jobs.c.generation_id),
    )


@retry_on_disconnect
async def finish_job(
    db: Queries,
    lease: JobLease,
    status: str,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> Job:
    """End a running job as succeeded, failed or cancelled, with its 'finished'/'failed'/'cancelled' event.

    Raises LeaseLost when the attempt is no longer the worker's: then nothing is written.
    """
    if status not in ENDED:
        raise ValueError(f"a job ends as one of {', '.join(ENDED)}, not {status!r}")
    event = {"succeeded": "finished", "failed": "failed", "cancelled": "cancelled"}[status]
    values: dict[str, Any] = {
        "status": status, "result": _dumps(result) if result is not None else None, "error": error,
        "finished_at": utc_now(),
    }
    if status == "succeeded":
        values["progress"] = 1.0
    async with db.transaction() as tx:
        finished = await _update_held(tx, lease, **values)
        data: dict[str, Any] = dict(result or {})
        if error:
            data["error"] = error
        await record_event(tx, lease.job_id, event, data)
    return finished


async def running_jobs(db: Queries) -> list[RunningJob]:
    """Every running job with the seconds since its last heartbeat, on the database's clock."""
    silent = seconds_between(jobs.c.heartbeat_at, utc_now()).label("silent_s")
    rows = await db.all(select(jobs, silent).where(jobs.c.status == "running").order_by(jobs.c.id))
    found = []
    for row in rows:
        values = dict(row)
        silent_s = values.pop("silent_s")
        found.append(RunningJob(job_from_row(values), None if silent_s is None else float(silent_s)))  # type: ignore[arg-type]
    return found


async def _locked_job(tx: Queries, job_id: int) -> Job:
    row = await tx.one(select(jobs).where(jobs.c.id == job_id).with_for_update())
    if row is None:
        raise JobNotFound(f"there is no job #{job_id}")
    return job_from_row(row)  # type: ignore[return-value]


@retry_on_disconnect
async def requeue_or_fail(
    db: Queries, lease: JobLease, max_attempts: int, why: str, *, silent_for_s: float | None = None
) -> Job:
    """A running job whose worker is gone: queue it again, or fail it once it has used up its tries.

    Acts only if that attempt is still running on that worker (two sweepers cannot both act)
    and, with `silent_for_s`, only if its last heartbeat is still that old on the database's
    clock (a worker that beat just now keeps its job).
    """
    async with db.transaction() as tx:
        job = await _locked_job(tx, lease.job_id)
        if job.status != "running" or job.worker_id != lease.worker_id or job.attempts != lease.attempt:
            return job
        if silent_for_s is not None:
            still_silent = await tx.scalar(
                select(jobs.c.id).where(jobs.c.id == job.id, jobs.c.heartbeat_at < utc_now_minus(silent_for_s))
            )
            if still_silent is None:
                return job
        if job.cancel_requested:
            await tx.execute(update(jobs).where(jobs.c.id == job.id).values(status="cancelled", finished_at=utc_now()))
            await record_event(tx, job.id, "cancelled", {"while": "running", "reason": why})
        elif job.attempts >= max_attempts:
            error = (
                f"gave up after {job.attempts} tries: {why} each time. This job may be crashing the worker "
                f"(for example running out of memory); try smaller settings, or ask the operator to check the worker log"
            )
            await tx.execute(
                update(jobs).where(jobs.c.id == job.id).values(status="failed", error=error, finished_at=utc_now())
            )
            await record_event(tx, job.id, "failed", {"error": error})
        else:
            await tx.execute(
                update(jobs).where(jobs.c.id == job.id)
                .values(status="queued", worker_id=None, heartbeat_at=None, error=f"requeued: {why}")
            )
            position = await queue_position(tx, job.id)
            await record_event(tx, job.id, "queued", {"position": position, "requeued": why})
            await tx.execute(Notify(WAKE_CHANNEL))
    return await _one_job(db, lease.job_id)


@retry_on_disconnect
async def release_job(db: Queries, lease: JobLease) -> Job:
    """A worker that is being stopped hands its running job back to the queue.

    The attempt is not counted: stopping the worker is not the job's fault. A training
    resumes from its latest checkpoint when it runs again.
    """
    async with db.transaction() as tx:
        job = await _locked_job(tx, lease.job_id)
        if job.status != "running" or job.worker_id != lease.worker_id or job.attempts != lease.attempt:
            return job
        await _requeue_uncounted(tx, job.id, "the worker was stopped")
    return await _one_job(db, lease.job_id)


async def _requeue_uncounted(tx: Queries, job_id: int, why: str) -> None:
    """Put a running job back in the queue without counting its attempt: not the job's fault."""
    await tx.execute(
        update(jobs).where(jobs.c.id == job_id).values(
            status="queued", worker_id=None, heartbeat_at=None,
            attempts=case((jobs.c.attempts > 0, jobs.c.attempts - 1), else_=0),
        )
    )
    position = await queue_position(tx, job_id)
    await record_event(tx, job_id, "queued", {"position": position, "requeued": why})
    await tx.execute(Notify(WAKE_CHANNEL))
