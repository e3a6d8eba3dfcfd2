"""The worker's APScheduler: the one-at-a-time GPU loop and the periodic chores.

One AsyncIOScheduler per worker process, on the worker's event loop. The GPU loop is an
interval job with `max_instances=1` and `coalesce=True`: while a job runs, later ticks are
skipped instead of piling up, so the GPU only ever runs one job (plus the generations a
training serves between its own steps). Each tick drains the queue, so an idle worker
picks up a new job within `POLL_S`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone

from apscheduler.schedulers.asyncio import AsyncIOScheduler

POLL_S = 1.0
HEARTBEAT_S = 2.0
RECOVER_S = 30.0
CLEAN_TMP_S = 600.0
RETENTION_S = 6 * 3600.0


class _SkipBusyTicks(logging.Filter):
    """A skipped GPU tick means 'still busy with a job', the normal state, not a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


def build_scheduler(
    work: Callable[[], Awaitable[None]],
    heartbeat: Callable[[], Awaitable[None]],
    recover: Callable[[], Awaitable[None]],
    clean_tmp: Callable[[], Awaitable[None]],
    retention: Callable[[], Awaitable[None]] | None,
) -> AsyncIOScheduler:
    """A scheduler (not started) with the GPU loop and chores; `retention` None = keep everything."""
    logging.getLogger("apscheduler.scheduler").addFilter(_SkipBusyTicks())
    # "Running job ... executed successfully" every second says nothing the job log does not.
    logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
    scheduler = AsyncIOScheduler(timezone=timezone.utc, job_defaults={"max_instances": 1, "coalesce": True})
    now = datetime.now(timezone.utc)
    scheduler.add_job(work, "interval", seconds=POLL_S, id="gpu-work", next_run_time=now, misfire_grace_time=None)
    scheduler.add_job(heartbeat, "interval", seconds=HEARTBEAT_S, id="heartbeat", misfire_grace_time=None)
    scheduler.add_job(recover, "interval", seconds=RECOVER_S, id="recover", misfire_grace_time=None)
    scheduler.add_job(clean_tmp, "interval", seconds=CLEAN_TMP_S, id="clean-tmp", next_run_time=now)
    if retention is not None:
        scheduler.add_job(retention, "interval", seconds=RETENTION_S, id="retention", next_run_time=now)
    return scheduler
