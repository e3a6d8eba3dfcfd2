"""The light types callers of the training service share (no torch import: the bot uses them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.usecases.scoring.choice import Choice
from storage.runs import ValidationImage


@dataclass
class ProgressInfo:
    step: int
    total: int
    loss: float
    lr: float
    images_per_s: float
    eta_s: float


@dataclass
class TrainingHooks:
    """Optional callbacks. The first three run on the event loop (they may be coroutines);
    `should_cancel` and `between_steps` run in the training thread and must be quick/thread-safe.
    `between_steps(make_room)` must call `make_room()` before it uses the GPU itself."""

    on_progress: Callable[[ProgressInfo], Any] | None = None
    on_checkpoint: Callable[[int, int], Any] | None = None  # (step, checkpoint_id)
    on_validation: Callable[[int, list[ValidationImage]], Any] | None = None
    should_cancel: Callable[[], bool] | None = None
    between_steps: Callable[[Callable[[], None]], None] | None = None


@dataclass(frozen=True)
class RunOutcome:
    run_id: int
    status: str  # succeeded, failed or cancelled
    error: str | None
    step: int
    kept: Choice | None = None  # the checkpoint a succeeded run keeps, and why (engine.usecases.scoring.choice)
