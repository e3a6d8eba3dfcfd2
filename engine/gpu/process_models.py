"""The models a process paints and scores with, assembled in one place: `ProcessModels`.

A GPU worker, `pawtrait imagine`, `pawtrait train` and `pawtrait eval --dreambench` each hold the
base model once, the Generator over it (pictures, and a training's validation rounds and class
images) and the Scorer, all configured from the same settings; a setting that shapes one of them
reaches every process because they are built only here.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.settings import Settings
from engine.gpu.compile import compiled_code_folder
from engine.gpu.generation.generator import Generator
from engine.gpu.models import BaseModel, load_base_model
from engine.gpu.scoring.scorer import Scorer
from engine.gpu.training.compile_ahead import TrainingCompileAhead
from engine.gpu.training.compiled_plans import CompiledPlans


@dataclass(frozen=True)
class ProcessModels:
    base: BaseModel
    generator: Generator
    scorer: Scorer | None  # None with PAWTRAIT_SCORES=off, unless scores were asked for

    @classmethod
    def around(cls, base: BaseModel, settings: Settings, *, scores: bool = False) -> ProcessModels:
        """The Generator and Scorer over a loaded base model; `scores` gives a Scorer even with
        PAWTRAIT_SCORES=off (a command that is asked to score). The scoring models load when first used."""
        return cls(base, Generator.from_settings(base, settings), Scorer.from_settings(settings, always=scores))

    @classmethod
    def load(cls, settings: Settings, *, scores: bool = False) -> ProcessModels:
        """Load the base model (ModelNotFound says what to set when it cannot) and assemble around it."""
        return cls.around(load_base_model(settings), settings, scores=scores)

    def training_compile(self, settings: Settings, *, wait_for_recorded: bool = False) -> TrainingCompileAhead | None:
        """What compiles this process's training steps, or None where trainings run uncompiled.

        Only on a GPU in full memory mode, as for pictures: in low memory mode (an 8 GB card) the
        offload hooks move the UNet between CPU and GPU under the blocks; trainings there were
        measured uncompiled (docs/BENCHMARKS.md, W8a-W8c) and compiling was never tried.
        `wait_for_recorded`: see TrainingCompileAhead (for a process without idle time).
        """
        if not (settings.compile_training and self.base.device.type == "cuda" and self.generator.memory == "full"):
            return None
        folder = compiled_code_folder()
        record = CompiledPlans.in_folder(folder, self.base) if folder is not None else None
        return TrainingCompileAhead(self.base, record=record, wait_for_recorded=wait_for_recorded)
