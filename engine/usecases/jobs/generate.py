"""The `generate` job: paint a GenerationRequest (the bot's `/imagine`, its buttons, `pawtrait imagine --detach`)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.usecases.generation.request import GenerationRequest
from engine.usecases.jobs.contract import Event, JobKind
from engine.usecases.jobs.events import LIFECYCLE


@dataclass(frozen=True)
class GeneratePayload:
    request: GenerationRequest


@dataclass(frozen=True)
class GenerateResult:
    generation_id: int
    files: tuple[str, ...]  # file-store keys, one PNG per image
    seeds: tuple[int, ...] = ()  # absent in jobs of release 0.1
    warnings: tuple[str, ...] = ()
    flagged: tuple[bool, ...] | None = None  # the safety check's verdict per picture; None when unscreened


@dataclass(frozen=True)
class Preview(Event):
    """A screened in-between picture, published at most once a second."""

    name = "preview"
    path: str | None = None  # file-store key of the PNG
    step: int = 0
    total: int = 0


def _summary(payload: GeneratePayload, _run_id: int | None) -> str:
    # As code in /queue and /cancel's answers, on one line: a backtick of the prompt's own would
    # end the code early, and a line break would start a line of the bot's own (bot.formatting.one_line).
    return f"`{' '.join(payload.request.prompt.replace('`', 'ˋ').split())[:60]}`"


GENERATE: JobKind[GeneratePayload, GenerateResult] = JobKind(
    name="generate",
    # Pictures take seconds and someone is watching the channel; trainings take minutes.
    priority=0,
    noun="generation",
    typical_s=30.0,
    served_between_steps=True,
    limit=lambda settings: settings.max_queued_generations_per_user,
    doing="painting",
    emoji="🎨",
    out_of_memory_advice="try fewer images per request, a smaller size, or again once the training on this GPU has finished",
    payload=GeneratePayload,
    result=GenerateResult,
    events=(*LIFECYCLE, Preview),
    runner="engine.gpu.worker.executor:Executor.run_generation",
    summary=_summary,
)
