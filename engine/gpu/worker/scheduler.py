"""The worker's APScheduler: the periodic chores beside the GPU loop.

One AsyncIOScheduler per worker process, on the worker's event loop, each chore with
`max_instances=1` and `coalesce=True`: a slow run is never overlapped by the next one.
The GPU loop itself is a plain task (engine.gpu.worker.process) woken by the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

# Leases: a heartbeat every 2 s and a sweep every few seconds requeue a dead host's job within
# worker_timeout_s plus one sweep (20 + 5 s by default), inside the 45 s an operator is promised.
HEARTBEAT_S = 2.0
MAX_RECOVER_S = 5.0
CLEAN_TMP_S = 600.0
SWEEP_S = 3600.0
RETENTION_S = 6 * 3600.0


def recover_interval_s(worker_timeout_s: float) -> float:
    """How often to look for jobs of dead workers: a quarter of the timeout, at most 5 s."""
    return min(MAX_RECOVER_S, worker_timeout_s / 4)


def build_scheduler(
    recover_s: float,
    heartbeat: Callable[[], Awaitable[None]],
    recover: Callable[[], Awaitable[None]],
    clean_tmp: Callable[[], Awaitable[None]],
    sweep: Callable[[], Awaitable[None]],
    retention: Callable[[], Awaitable[None]] | None,
    drop_copies: Callable[[], Awaitable[None]],
    drop_copies_s: float,
) -> AsyncIOScheduler:
    """A scheduler (not started) with the chores; `retention` None = keep everything; `drop_copies`
    every `drop_copies_s` (PAWTRAIT_CACHE_SWEEP_S) bounds how long a deleted object's copy stays here."""
    # "Running job ... executed successfully" every two seconds says nothing the job log does not.
    logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
    scheduler = AsyncIOScheduler(timezone=UTC, job_defaults={"max_instances": 1, "coalesce": True})
    now = datetime.now(UTC)
    scheduler.add_job(heartbeat, "interval", seconds=HEARTBEAT_S, id="heartbeat", next_run_time=now,
                      misfire_grace_time=None)
    scheduler.add_job(recover, "interval", seconds=recover_s, id="recover", misfire_grace_time=None)
    scheduler.add_job(clean_tmp, "interval", seconds=CLEAN_TMP_S, id="clean-tmp", next_run_time=now)
    scheduler.add_job(sweep, "interval", seconds=SWEEP_S, id="sweep", next_run_time=now)
    scheduler.add_job(drop_copies, "interval", seconds=drop_copies_s, id="drop-copies", next_run_time=now)
    if retention is not None:
        scheduler.add_job(retention, "interval", seconds=RETENTION_S, id="retention", next_run_time=now)
    return scheduler
