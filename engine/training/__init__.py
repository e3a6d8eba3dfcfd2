"""SDXL DreamBooth LoRA training: parameters, the loop, checkpoints, validation, and the run service.

`execute_run` is imported lazily: everything else here is free of torch, so the bot can
create runs and read progress without loading the GPU stack.
"""

from typing import Any

from engine.training.create import TrainingInputError, create_run
from engine.training.hooks import ProgressInfo, RunOutcome, TrainingHooks
from engine.training.params import TrainingParams

__all__ = [
    "ProgressInfo",
    "RunOutcome",
    "TrainingHooks",
    "TrainingInputError",
    "TrainingParams",
    "create_run",
    "execute_run",
]


def __getattr__(name: str) -> Any:
    if name == "execute_run":
        from engine.training.service import execute_run

        return execute_run
    raise AttributeError(name)
