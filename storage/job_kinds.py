"""The one registry of job kinds: what each kind is called, where it goes in the queue,
which per-member limit applies, and how front ends and failures describe it.

Everything that depends on a job's kind reads it here (the queue's order, `/queue`,
`pawtrait jobs`, failure messages); the worker maps each kind to the function that runs
it (engine.gpu.worker.executor.RUNNERS) and refuses to start if one is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from config.settings import Settings


@dataclass(frozen=True)
class JobKind:
    name: str  # stored in jobs.kind
    priority: int  # lower runs first; first come first served within a priority
    noun: str  # "you already have 2 generations waiting"
    doing: str  # "ran out of GPU memory while painting"
    emoji: str
    typical_s: float  # an ETA's guess before any job of the kind has finished here
    served_between_steps: bool  # a training pauses at a step boundary to run these
    out_of_memory_advice: str
    limit: Callable[[Settings], int]  # how many one member may have waiting
    summary: Callable[[Mapping[str, Any], int | None], str]  # (payload, run_id) -> one line for a listing

    def plural(self, count: int) -> str:
        return self.noun if count == 1 else f"{self.noun}s"

    def describe(self, payload: Mapping[str, Any], run_id: int | None) -> str:
        return f"{self.emoji} {self.summary(payload, run_id)}"


def _prompt(payload: Mapping[str, Any], _run_id: int | None) -> str:
    return f"`{str((payload.get('request') or {}).get('prompt', ''))[:60]}`"


def _run(_payload: Mapping[str, Any], run_id: int | None) -> str:
    return f"training (run #{run_id})" if run_id is not None else "training"


GENERATE = JobKind(
    name="generate",
    # Pictures take seconds and someone is watching the channel; trainings take minutes.
    priority=0,
    noun="generation",
    doing="painting",
    emoji="🎨",
    typical_s=30.0,
    served_between_steps=True,
    out_of_memory_advice="try fewer images per request, a smaller size, or again once the training on this GPU has finished",
    limit=lambda settings: settings.max_queued_generations_per_user,
    summary=_prompt,
)
TRAIN = JobKind(
    name="train",
    priority=1,
    noun="training",
    doing="training",
    emoji="🏋️",
    typical_s=600.0,
    served_between_steps=False,
    out_of_memory_advice="try again when the GPU is less busy, or with PAWTRAIT_TRAIN_MODE=lean (gradient checkpointing) or a lower rank",
    limit=lambda settings: settings.max_queued_trainings_per_user,
    summary=_run,
)

KINDS: dict[str, JobKind] = {kind.name: kind for kind in (GENERATE, TRAIN)}


def job_kind(name: str) -> JobKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown job kind {name!r}; expected one of {', '.join(KINDS)}") from None
