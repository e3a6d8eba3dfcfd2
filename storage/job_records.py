"""The queue's records as the rest of the project sees them: a job, its events, a worker's
lease on it, where a reader of events is, and the errors the queue raises. The SQL that
reads and writes them is storage.jobs'; payloads, results and event data stay JSON here
(engine.usecases.jobs reads them through each kind's types).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

ACTIVE = ("queued", "running")
ENDED = ("succeeded", "failed", "cancelled")
EVENT_KINDS = (
    "queued", "started", "progress", "checkpoint", "validation", "preview", "finished", "failed", "cancelled",
)


class QueueLimitReached(ValueError):
    """The member already has as many jobs of that kind waiting as allowed; the message says so."""


class JobNotFound(LookupError):
    """No job has that id."""


class LeaseLost(RuntimeError):
    """The job is no longer this worker's (requeued after it went silent, then claimed again)."""

    @classmethod
    def of(cls, lease: JobLease) -> LeaseLost:
        return cls(f"job #{lease.job_id} attempt {lease.attempt} is no longer {lease.worker_id}'s")


@dataclass(frozen=True)
class JobLease:
    """A worker's claim on one attempt of a job: what its writes are fenced on."""

    job_id: int
    worker_id: str
    attempt: int


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

    @property
    def lease(self) -> JobLease:
        """The lease of the attempt now running (only meaningful while status is 'running')."""
        if self.worker_id is None:
            raise ValueError(f"job #{self.id} is not running on any worker")
        return JobLease(self.id, self.worker_id, self.attempts)


class EventPosition(NamedTuple):
    """Where a reader of job events is: events are read in (tx, id) order (dialects.event_horizon)."""

    tx: int
    id: int


START = EventPosition(-1, 0)


@dataclass(frozen=True)
class JobEvent:
    id: int
    job_id: int
    kind: str
    data: dict[str, Any]
    created_at: str
    tx: int = 0

    @property
    def position(self) -> EventPosition:
        return EventPosition(self.tx, self.id)


def job_from_row(row: Mapping[str, Any] | None) -> Job | None:
    """A `jobs` row as a Job, its JSON columns read back (None for no row)."""
    if row is None:
        return None
    values = dict(row)
    values["payload"] = json.loads(values["payload"])
    values["result"] = json.loads(values["result"]) if values["result"] is not None else None
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Job(**values)


@dataclass(frozen=True)
class RunningJob:
    """A running job as the sweeper sees it: whose it is and how long since its worker beat."""

    job: Job
    silent_s: float | None
