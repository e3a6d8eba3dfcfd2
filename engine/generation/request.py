"""What a user asks for: a `GenerationRequest`, its size presets and its validation.

The request is plain data (JSON-safe through `to_dict`/`from_dict`) because it travels
through the job queue from the bot to a worker process. `validate()` catches everything a
user can get wrong before any GPU time is spent, with a message that says what to do.
"""

from __future__ import annotations

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


class GenerationError(ValueError):
    """A request that cannot be served; the message is meant for the user as is."""


@dataclass
class GenerationRequest:
    prompt: str
    pet_id: int | None = None
    negative_prompt: str = ""
    seed: int | None = None
    steps: int = 30
    guidance: float = 5.0
    size: str = "1:1"
    count: int = 1
    lora_scale: float = 1.0
    checkpoint_id: int | None = None

    def validate(self) -> None:
        """Raise `GenerationError` naming the first thing wrong and what is allowed."""
        if not self.prompt or not self.prompt.strip():
            raise GenerationError("the prompt is empty: describe the picture you want, e.g. 'a photo of TOK cat on the moon'")
        if not isinstance(self.count, int) or not 1 <= self.count <= MAX_COUNT:
            raise GenerationError(f"count must be 1 to {MAX_COUNT} (got {self.count})")
        if self.size not in SIZE_PRESETS:
            allowed = ", ".join(SIZE_PRESETS)
            raise GenerationError(f"unknown size {self.size!r}: choose one of {allowed}")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise GenerationError(f"steps must be 1 to {MAX_STEPS} (got {self.steps}); 30 is a good default")
        if not 1.0 <= self.guidance <= MAX_GUIDANCE:
            raise GenerationError(f"guidance must be 1 to {MAX_GUIDANCE:g} (got {self.guidance:g}); 5 is a good default")
        if not 0.0 <= self.lora_scale <= MAX_LORA_SCALE:
            raise GenerationError(f"strength must be 0 to {MAX_LORA_SCALE:g} (got {self.lora_scale:g}); 1 is the trained look")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise GenerationError(f"seed must be 0 to {MAX_SEED} (got {self.seed})")
        if self.seed is not None and self.seed + self.count - 1 > MAX_SEED:
            raise GenerationError(f"seed must be at most {MAX_SEED - self.count + 1} for {self.count} images")

    @property
    def width(self) -> int:
        return SIZE_PRESETS[self.size][0]

    @property
    def height(self) -> int:
        return SIZE_PRESETS[self.size][1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationRequest":
        """Build from a job payload, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})
