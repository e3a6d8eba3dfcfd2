"""The models a process paints and scores with, assembled in one place: `ProcessModels`.

A GPU worker, `pawtrait imagine`, `pawtrait train` and `pawtrait eval --dreambench` each hold the
base model once, the Generator over it (pictures, and a training's validation rounds and class
images) and the Scorer, all configured from the same settings; a setting that shapes one of them
reaches every process because they are built only here.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.settings import Settings
from engine.gpu.generation.generator import Generator
from engine.gpu.models import BaseModel, load_base_model
from engine.gpu.scoring.scorer import Scorer


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
