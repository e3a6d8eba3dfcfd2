"""What a user asks for: a `GenerationRequest`, its size presets and its validation.

The request is plain data (JSON-safe through `to_dict`/`from_dict`) because it travels
through the job queue from the bot to a worker process. It is checked once, where it is made
(a front end's command, or read back from a job): a request that exists is valid, so
nothing downstream checks it again. The check catches everything a user can get wrong
before any GPU time is spent, with a message that says what to do; a change is a new
request (`dataclasses.replace`), checked in turn.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

# SDXL was trained at about one megapixel in these buckets; other sizes degrade quickly.
SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "4:3": (1152, 896),
    "3:4": (896, 1152),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
}
MAX_COUNT = 4
MAX_STEPS = 100
MAX_GUIDANCE = 20.0
MAX_LORA_SCALE = 2.0
MAX_SEED = 2**32 - 1  # A1111 and most tools show 32-bit seeds
# How far a variation may move from its source image (img2img denoising strength): below
# 0.05 nothing visible changes; 1.0 keeps only the source's size and rough colours.
MIN_VARIATION_STRENGTH = 0.05
MAX_VARIATION_STRENGTH = 1.0
DEFAULT_VARIATION_STRENGTH = 0.6
# /imagine's defaults, and so the recipe of a training's validation rounds and class images
# (engine/gpu/generation/recipe.py). Plain numbers here: the bot offers them without importing torch.
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE = 5.0


class GenerationError(ValueError):
    """A request that cannot be served; the message is meant for the user as is."""


def untrained(pet_name: str) -> GenerationError:
    return GenerationError(f"{pet_name} has no finished training yet: train {pet_name} first, then imagine again.")


def checkpoint_gone(pet_name: str, checkpoint_id: int) -> GenerationError:
    return GenerationError(
        f"{pet_name} has no checkpoint #{checkpoint_id} (it may have been deleted since): "
        f"imagine anew to paint with {pet_name}'s current checkpoint."
    )


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    pet_id: int | None = None
    negative_prompt: str = ""
    seed: int | None = None
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    size: str = "1:1"
    count: int = 1
    lora_scale: float = 1.0
    # Set when the request is queued (the pet's checkpoint then), so a reroll or a variation of
    # its pictures paints with the checkpoint they were painted with, whatever the pet uses by then.
    checkpoint_id: int | None = None
    # A variation repaints image `source_image` (1 = first) of generation `source_generation_id`.
    source_generation_id: int | None = None
    source_image: int = 1
    variation_strength: float = DEFAULT_VARIATION_STRENGTH
    # Asked in an age-restricted channel (or a thread of one): prompt screening allows sexual
    # terms only there (engine.usecases.moderation.prompts). Front ends other than Discord leave it off.
    age_restricted: bool = False

    def __post_init__(self) -> None:
        """Raise `GenerationError` naming the first thing wrong and what is allowed."""
        if not self.prompt or not self.prompt.strip():
            raise GenerationError("The prompt is empty: describe the picture you want, e.g. 'a photo of TOK cat on the moon'.")
        if not isinstance(self.count, int) or not 1 <= self.count <= MAX_COUNT:
            raise GenerationError(f"Count must be 1 to {MAX_COUNT} (got {self.count}).")
        if self.size not in SIZE_PRESETS:
            allowed = ", ".join(SIZE_PRESETS)
            raise GenerationError(f"Unknown size {self.size!r}: choose one of {allowed}.")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise GenerationError(f"Steps must be 1 to {MAX_STEPS} (got {self.steps}); {DEFAULT_STEPS} is a good default.")
        if not 1.0 <= self.guidance <= MAX_GUIDANCE:
            raise GenerationError(f"Guidance must be 1 to {MAX_GUIDANCE:g} (got {self.guidance:g}); {DEFAULT_GUIDANCE:g} is a good default.")
        if not 0.0 <= self.lora_scale <= MAX_LORA_SCALE:
            raise GenerationError(f"Strength must be 0 to {MAX_LORA_SCALE:g} (got {self.lora_scale:g}); 1 is the trained look.")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise GenerationError(f"Seed must be 0 to {MAX_SEED} (got {self.seed}).")
        if self.seed is not None and self.seed + self.count - 1 > MAX_SEED:
            raise GenerationError(f"Seed must be at most {MAX_SEED - self.count + 1} for {self.count} images.")
        if self.source_generation_id is not None:
            self._validate_variation()

    def _validate_variation(self) -> None:
        low, high = MIN_VARIATION_STRENGTH, MAX_VARIATION_STRENGTH
        if not low <= self.variation_strength <= high:
            raise GenerationError(
                f"The variation strength must be {low:g} to {high:g} (got {self.variation_strength:g}): "
                f"low keeps the picture close to the original, high changes more; {DEFAULT_VARIATION_STRENGTH:g} is a good default."
            )
        if not isinstance(self.source_image, int) or not 1 <= self.source_image <= MAX_COUNT:
            raise GenerationError(f"The source image must be 1 to {MAX_COUNT} (got {self.source_image}).")
        if self.denoising_steps < 1:
            raise GenerationError(
                f"At variation strength {self.variation_strength:g} none of the {self.steps} steps would run "
                f"(strength x steps must be at least 1): raise the steps or the strength."
            )

    @property
    def is_variation(self) -> bool:
        return self.source_generation_id is not None

    @property
    def denoising_steps(self) -> int:
        """Steps that actually run: img2img skips the first (1 - strength) of the schedule, as diffusers does."""
        if not self.is_variation:
            return self.steps
        return min(int(self.steps * self.variation_strength), self.steps)

    @property
    def width(self) -> int:
        return SIZE_PRESETS[self.size][0]

    @property
    def height(self) -> int:
        return SIZE_PRESETS[self.size][1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationRequest:
        """Build from a job payload, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})
