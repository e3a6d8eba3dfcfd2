"""The one registry of job kinds. Everything that depends on a job's kind looks it up here:
the queue's order and caps (registered with storage.job_kinds on import), `/queue`,
`pawtrait jobs`, the bot's listeners, failure messages, and the worker's runner for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from engine.usecases.jobs.contract import JobKind
from engine.usecases.jobs.generate import GENERATE
from engine.usecases.jobs.train import TRAIN
from storage.job_kinds import register
from storage.job_records import Job

KINDS: dict[str, JobKind[Any, Any]] = {kind.name: kind for kind in (GENERATE, TRAIN)}
register(KINDS.values())


def job_kind(name: str) -> JobKind[Any, Any]:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown job kind {name!r}; expected one of {', '.join(KINDS)}") from None


def describe(job: Job) -> str:
    """One line for a listing (`/queue`, `pawtrait jobs`)."""
    return job_kind(job.kind).describe(job)


def listeners() -> set[str]:
    """Every bot listener the relay may call: one per kind and event of that kind."""
    return {event.listener(kind.name) for kind in KINDS.values() for event in kind.events}


def runner_of(kind: JobKind[Any, Any]) -> Callable[..., Any]:
    """The worker's function that runs `kind` (imported here, by name: it loads the GPU stack).

    Raises RuntimeError when it cannot be found, so a worker refuses to start without it."""
    module, _, qualname = kind.runner.partition(":")
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as error:
        raise RuntimeError(f"no runner for job kind {kind.name!r}: {kind.runner} cannot be found ({error})") from None
    return found
