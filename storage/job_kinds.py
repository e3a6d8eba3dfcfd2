"""What the queue needs to know of a job kind (its place in the queue, the per-member cap, a
first guess at its run time) and the kinds registered with it.

Storage declares no kind itself: each kind is declared once, with its payload, result,
events and runner, in `engine.usecases.jobs` (a package storage may not import), and that
package registers its kinds here when it is imported, as procrastinate's tasks register
with their app. Whoever uses the queue imports it first; a queue used without any kind
says so instead of ordering jobs by nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from config.settings import Settings


@dataclass(frozen=True)
class QueueKind:
    name: str  # stored in jobs.kind
    priority: int  # lower runs first; first come first served within a priority
    noun: str  # "you already have 2 generations waiting"
    typical_s: float  # an ETA's guess before any job of the kind has finished here
    served_between_steps: bool  # a training pauses at a step boundary to run these
    limit: Callable[[Settings], int]  # how many one member may have waiting

    def plural(self, count: int) -> str:
        return self.noun if count == 1 else f"{self.noun}s"


_registered: dict[str, QueueKind] = {}


def register(kinds: Iterable[QueueKind]) -> None:
    """Make the kinds known to the queue (engine.usecases.jobs.registry does, once)."""
    for kind in kinds:
        _registered[kind.name] = kind


def queue_kinds() -> Mapping[str, QueueKind]:
    if not _registered:
        raise RuntimeError("no job kinds are registered with the queue: import engine.usecases.jobs first")
    return _registered


def queue_kind(name: str) -> QueueKind:
    kinds = queue_kinds()
    try:
        return kinds[name]
    except KeyError:
        raise ValueError(f"unknown job kind {name!r}; expected one of {', '.join(kinds)}") from None
