"""How Pawtrait paints a picture: `Recipe`, the one recipe of `/imagine`, validation rounds and class images.

Members vote on a training's validation rounds to choose the checkpoint that `/imagine` will
paint their pet with, so a round shows what `/imagine` paints with that checkpoint, prompt and
seed (issue 27). Class images need the base model's typical pictures of the class, not one
particular sampler, so they take the same recipe. A change to `/imagine`'s defaults (the
request's steps and guidance, the guidance interval in the settings) changes all three.

The recipe is also the cheaper one: with the guidance interval a picture at 30 steps takes 45
UNet passes, where rounds and class images took 50 before (25 steps, guidance at each).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import DPMSolverMultistepScheduler, StableDiffusionXLPipeline

from config.settings import Settings
from engine.gpu.generation.guidance import GuidanceInterval
from engine.usecases.generation.request import DEFAULT_GUIDANCE, DEFAULT_STEPS

SAMPLER_NAME = "DPM++ 2M Karras"  # what A1111 calls the scheduler `Recipe.scheduler` builds


@dataclass(frozen=True)
class Recipe:
    """`/imagine`'s defaults: DPM++ 2M Karras, `steps`, `guidance`, guided only inside `interval`
    (None: at every step)."""

    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    interval: GuidanceInterval | None = GuidanceInterval()
    sampler: str = SAMPLER_NAME

    @classmethod
    def from_settings(cls, settings: Settings) -> Recipe:
        interval = settings.guidance_interval
        return cls(interval=GuidanceInterval(*interval) if interval else None)

    @staticmethod
    def scheduler(pipe: StableDiffusionXLPipeline) -> DPMSolverMultistepScheduler:
        """DPM++ 2M with Karras sigmas from the model's own noise schedule: sharp at 20-30 steps."""
        return DPMSolverMultistepScheduler.from_config(
            pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
        )

    def interval_for(self, guidance: float, pipe: StableDiffusionXLPipeline) -> GuidanceInterval | None:
        """The interval to guide in at this guidance scale, or None where there is no negative pass
        to skip: the pipelines run one only for guidance above 1 on a UNet without guidance
        embedding (as their `do_classifier_free_guidance` decides)."""
        guided = guidance > 1 and pipe.unet.config.time_cond_proj_dim is None
        return self.interval if guided else None


DEFAULT_RECIPE = Recipe()  # with the settings' default guidance interval
