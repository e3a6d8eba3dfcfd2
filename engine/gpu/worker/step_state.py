"""What a training asks between two optimizer steps, answered from memory.

At every step boundary the training thread asks whether its job was cancelled and whether a
generation waits that it should paint now. It used to ask the database each time, waiting for
the event loop and three queries per step (docs/BENCHMARKS.md, "Per-step overhead"). Now the
event loop keeps the answers here and the thread only reads them: the worker's executor
refreshes them while it runs a job, at every wake-up (`Wakeup.news`: PostgreSQL's NOTIFY when a
job is queued or a running one cancelled, within milliseconds; on SQLite its poll, every POLL_S)
and at least at the heartbeat's pace in case a notification was lost. A lost claim needs no
query: the heartbeat itself reports it (Executor.still_held).

The thread reads attributes the loop replaces whole, so it never sees half an update.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass

from engine.usecases.jobs.registry import KINDS
from storage import jobs, workers
from storage.db import Queries
from storage.wakeup import Wakeup

log = logging.getLogger(__name__)

SERVED_BETWEEN_STEPS = tuple(kind.name for kind in KINDS.values() if kind.served_between_steps)
# An idle worker this recently seen takes a waiting generation itself (a few heartbeats).
IDLE_FRESH_S = 6.0


@dataclass
class StepState:
    """The answers, as of the last refresh."""

    cancelled: frozenset[int] = frozenset()  # running jobs asked to stop
    serve: bool = False  # a generation waits and no other worker is idle to take it

    async def refresh(self, db: Queries, worker_id: str, running: Collection[int]) -> None:
        """Ask the database (on the event loop)."""
        self.cancelled = await jobs.cancels_among(db, set(running))
        self.serve = (await jobs.has_queued(db, SERVED_BETWEEN_STEPS)
                      and await workers.idle_others(db, worker_id, IDLE_FRESH_S) == 0)


async def keep_fresh(state: StepState, wakeup: Wakeup, db: Queries, worker_id: str, running: Collection[int],
                     at_least_every_s: float) -> None:
    """Refresh `state` now, then at every wake-up and at least every `at_least_every_s`, until cancelled."""
    while True:
        try:
            await state.refresh(db, worker_id, running)
            await wakeup.news(at_least_every_s)
        except asyncio.CancelledError:
            raise
        except Exception:  # e.g. the database restarting: the answers stay as they were meanwhile
            log.exception("worker %s: refreshing what the training asks between steps failed; trying again", worker_id)
            await asyncio.sleep(1.0)
