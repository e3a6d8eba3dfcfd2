"""A training's parameters, its creation from a pet's photos, and the hooks that report its progress."""

from engine.usecases.training.create import create_run
from engine.usecases.training.hooks import ProgressInfo, RunOutcome, TrainingHooks
from engine.usecases.training.params import TrainingInputError, TrainingParams

__all__ = ["ProgressInfo", "RunOutcome", "TrainingHooks", "TrainingInputError", "TrainingParams", "create_run"]
