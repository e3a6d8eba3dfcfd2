"""The registry of live workers: which host and device each runs on, and what it is doing.

Workers write their own row (at start, on every state change and with every heartbeat);
a training reads it to leave a waiting generation to an idle worker instead of pausing for
it, and front ends read it to say how many GPUs serve the queue. Freshness is judged on
the database's clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select, update

from storage.db import Queries
from storage.dialects import insert_for, utc_now, utc_now_minus
from storage.schema import workers

STATES = ("starting", "idle", "busy", "stopping")


@dataclass(frozen=True)
class Worker:
    id: str
    host: str
    device: str
    state: str
    job_id: int | None
    started_at: str
    heartbeat_at: str


async def register(db: Queries, worker_id: str, host: str, device: str) -> None:
    await db.execute(
        insert_for(db.dialect, workers)
        .values(id=worker_id, host=host, device=device, state="starting", started_at=utc_now(), heartbeat_at=utc_now())
        .on_conflict_do_update(index_elements=[workers.c.id], set_={"state": "starting", "heartbeat_at": utc_now()})
    )


async def set_state(db: Queries, worker_id: str, state: str, job_id: int | None = None) -> None:
    if state not in STATES:
        raise ValueError(f"unknown worker state {state!r}")
    await db.execute(
        update(workers).where(workers.c.id == worker_id).values(state=state, job_id=job_id, heartbeat_at=utc_now())
    )


async def beat(db: Queries, worker_id: str) -> None:
    await db.execute(update(workers).where(workers.c.id == worker_id).values(heartbeat_at=utc_now()))


async def idle_others(db: Queries, worker_id: str, fresh_s: float) -> int:
    """How many other workers are idle and beat within `fresh_s` seconds."""
    return int(await db.scalar(
        select(func.count()).select_from(workers).where(
            workers.c.id != worker_id, workers.c.state == "idle", workers.c.heartbeat_at > utc_now_minus(fresh_s)
        )
    ))


async def live(db: Queries, fresh_s: float) -> list[Worker]:
    """Workers that beat within `fresh_s` seconds, oldest first."""
    rows = await db.all(
        select(workers).where(workers.c.heartbeat_at > utc_now_minus(fresh_s)).order_by(workers.c.started_at)
    )
    return [Worker(**row) for row in rows]


async def forget(db: Queries, worker_id: str) -> None:
    await db.execute(delete(workers).where(workers.c.id == worker_id))


async def prune(db: Queries, silent_s: float) -> int:
    """Drop the rows of workers silent for longer than `silent_s` (they died without saying so)."""
    result = await db.execute(delete(workers).where(workers.c.heartbeat_at < utc_now_minus(silent_s)))
    return result.rowcount
