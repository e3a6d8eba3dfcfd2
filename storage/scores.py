"""Checkpoint scores as stored: per validation picture, and averaged per step of a run.

The numbers are the DreamBooth paper's (engine/gpu/scoring computes them): `dino` and `clip_i`
say how much a picture looks like the pet's own photos, `clip_t` how well it follows its
prompt. A run's step 0 renders the same prompts and seeds with the untrained model: it is
the reference every checkpoint is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, or_, select

from storage.db import Queries
from storage.schema import validation_images


@dataclass(frozen=True)
class ImageScores:
    """One picture's scores (cosine similarities, -1..1; the paper reports 0.3-0.8)."""

    dino: float
    clip_i: float
    clip_t: float


@dataclass(frozen=True)
class StepScores:
    """The mean scores of one step's validation pictures; None where none of them was scored."""

    step: int
    checkpoint_id: int | None  # None only for step 0, the untrained model
    dino: float | None
    clip_i: float | None
    clip_t: float | None
    scored: int  # pictures with scores

    @property
    def has_scores(self) -> bool:
        return self.dino is not None and self.clip_i is not None and self.clip_t is not None


@dataclass(frozen=True)
class RunScores:
    """A run's checkpoints with their scores (by step), and the untrained model's as the reference."""

    reference: StepScores | None
    steps: list[StepScores]


async def run_scores(db: Queries, run_id: int) -> RunScores:
    """Mean scores per validated step: step 0 as the reference, then every step that has a checkpoint.

    Validation at a step without a checkpoint is left out: nobody can pick it.
    """
    rows = await db.all(
        select(
            validation_images.c.step,
            func.max(validation_images.c.checkpoint_id).label("checkpoint_id"),
            func.avg(validation_images.c.dino).label("dino"),
            func.avg(validation_images.c.clip_i).label("clip_i"),
            func.avg(validation_images.c.clip_t).label("clip_t"),
            func.count(validation_images.c.clip_t).label("scored"),
        )
        .where(
            validation_images.c.run_id == run_id,
            or_(validation_images.c.step == 0, validation_images.c.checkpoint_id.is_not(None)),
        )
        .group_by(validation_images.c.step)
        .order_by(validation_images.c.step)
    )
    steps = [_step(row) for row in rows]
    reference = steps[0] if steps and steps[0].step == 0 else None
    return RunScores(reference=reference, steps=[step for step in steps if step.step > 0])


def _step(row) -> StepScores:
    def mean(value) -> float | None:
        return None if value is None else float(value)

    return StepScores(
        step=int(row["step"]),
        checkpoint_id=row["checkpoint_id"],
        dino=mean(row["dino"]),
        clip_i=mean(row["clip_i"]),
        clip_t=mean(row["clip_t"]),
        scored=int(row["scored"]),
    )
