"""The events every job has: the queue writes these (storage.jobs), and a worker reports progress.

Each field has the default its readers assumed when a key was absent, so an event written by
an older version (or with fewer details) still reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.usecases.jobs.contract import Event


@dataclass(frozen=True)
class Queued(Event):
    name = "queued"
    position: int | None = None  # 1 = runs next
    requeued: str | None = None  # why it is queued again, if it ran before


@dataclass(frozen=True)
class Started(Event):
    name = "started"
    worker: str = ""
    attempt: int = 0


@dataclass(frozen=True)
class Progress(Event):
    name = "progress"
    step: int = 0
    total: int = 0
    loss: float | None = None  # a training's
    eta_s: float | None = None  # a training's own estimate of the time left


@dataclass(frozen=True)
class Finished(Event):
    """The job succeeded; its result is the job's (JobKind.result_of)."""

    name = "finished"


@dataclass(frozen=True)
class Failed(Event):
    name = "failed"
    error: str | None = None


@dataclass(frozen=True)
class Cancelled(Event):
    name = "cancelled"
    during: str | None = field(default=None, metadata={"json": "while"})  # "queued" or "running"
    reason: str | None = None


LIFECYCLE: tuple[type[Event], ...] = (Queued, Started, Progress, Finished, Failed, Cancelled)
