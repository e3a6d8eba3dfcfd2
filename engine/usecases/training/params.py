"""Every knob of a training run, with the seed recipe's values as defaults.

The whole dataclass is stored as JSON with the run (`training_runs.params`), so a run can
be resumed, compared or repeated exactly, and a later change of defaults never changes
what an old run meant. `TrainingParams.for_steps` is how this installation sets up a new run,
whoever asks: the bot's `/train` and `pawtrait train` get the same checkpoints and rounds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from config.settings import Settings

DEFAULT_STEPS = 500
MODES = ("auto", "fast", "lean")
OPTIMIZERS = ("adamw8bit", "adamw")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
DEFAULT_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")


def checkpoint_interval(steps: int) -> int:
    """About five checkpoints, each with a validation round, per run (the seed's 100 of 500), so a
    run of any length has a few to vote on; never more often than every 2 steps."""
    return min(steps, max(2, steps // 5))


class TrainingInputError(ValueError):
    """The run cannot start as asked; the message says what to do."""


@dataclass(frozen=True)
class TrainingParams:
    """One DreamBooth LoRA run. Defaults = the seed's recipe without prior preservation."""

    steps: int = DEFAULT_STEPS  # optimizer steps
    rank: int = 4
    alpha: float | None = None  # None = rank (the seed's scale of 1.0)
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    batch_size: int = 1
    gradient_accumulation: int = 4  # images per optimizer step = batch_size * gradient_accumulation
    snr_gamma: float = 5.0  # min-SNR weighting; 0 turns it off
    max_grad_norm: float = 1.0
    resolution: int = 1024
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    seed: int = 0
    flip: bool = False  # random horizontal flip (both versions cached)
    prior_preservation: bool = False
    class_images: int = 100
    prior_loss_weight: float = 1.0
    checkpoint_every: int = 100
    validate_every: int = 100  # 0 = only before the first and after the last step
    keep_checkpoints: int = 0  # 0 = keep all
    validation_prompts: tuple[str, ...] = ()  # empty = the instance prompt plus two creative ones; TOK = the pet
    validation_seed: int = 42  # prompt i uses validation_seed + i at every step, so steps compare like for like
    # Rounds and class images are painted with /imagine's recipe (engine/gpu/generation/recipe.py); a
    # run stored with the steps and guidance they once had keeps those keys in `extra`.
    mode: str = "auto"  # fast (no gradient checkpointing, big micro-batches), lean, or auto from free memory
    gradient_checkpointing: bool | None = None  # None = decided by the mode
    micro_batch: int | None = None  # images per forward/backward; None = decided by the mode
    optimizer: str = "adamw8bit"
    compile: bool = True  # UNet blocks compiled, where the worker compiled them ahead for this plan (compile_ahead.py)
    cuda_graphs: bool = True  # replay the forward/backward as a CUDA graph (CUDA, bf16 and fp16; same results)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # unknown keys from newer versions

    @classmethod
    def for_steps(cls, steps: int, settings: Settings, **choices: Any) -> TrainingParams:
        """A new run of `steps` as this installation trains it: its resolution, mode, compiling and
        CUDA graphs, and a checkpoint with a validation round every `checkpoint_interval(steps)`.
        `choices` set any other field or override these; a choice of None keeps what it would be."""
        every = checkpoint_interval(steps)
        values: dict[str, Any] = dict(
            steps=steps, checkpoint_every=every, validate_every=every, resolution=settings.resolution,
            mode=settings.train_mode, compile=settings.compile_training, cuda_graphs=settings.cuda_graphs,
        )
        values.update((name, value) for name, value in choices.items() if value is not None)
        return cls(**values)

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def images_per_step(self) -> int:
        return self.batch_size * self.gradient_accumulation

    @property
    def unet_images_per_step(self) -> int:
        """What goes through the UNet per optimizer step: the photos, and as many class images with
        prior preservation."""
        return self.images_per_step * (2 if self.prior_preservation else 1)

    def __post_init__(self) -> None:
        """Checked once, when made (by a front end, or read back from a run's row): a TrainingParams
        that exists is valid, so nothing downstream checks it again. Raises TrainingInputError with
        a plain-words message for the first bad value."""
        checks = [
            (self.steps >= 1, "Steps must be at least 1."),
            (self.rank >= 1, "Rank must be at least 1 (try 4, 8 or 16)."),
            (self.alpha is None or self.alpha > 0, "Alpha must be greater than 0."),
            (self.learning_rate > 0, "Learning rate must be greater than 0 (the seed uses 1e-4)."),
            (self.lr_scheduler in LR_SCHEDULERS, f"The learning-rate schedule must be one of {', '.join(LR_SCHEDULERS)}."),
            (self.lr_warmup_steps >= 0, "Warm-up steps cannot be negative."),
            (self.batch_size >= 1, "Batch size must be at least 1."),
            (self.gradient_accumulation >= 1, "Gradient accumulation must be at least 1."),
            (self.snr_gamma >= 0, "The SNR gamma cannot be negative (0 turns min-SNR weighting off)."),
            (self.max_grad_norm >= 0, "The largest gradient norm cannot be negative (0 turns clipping off)."),
            (self.resolution % 64 == 0 and 64 <= self.resolution <= 2048,
             "The resolution must be a multiple of 64 from 64 to 2048 (SDXL is trained at 1024)."),
            (len(self.target_modules) > 0, "At least one target module is needed for the LoRA."),
            (not self.prior_preservation or self.class_images >= 1, "Prior preservation needs at least 1 class image."),
            (self.prior_loss_weight >= 0, "Prior loss weight cannot be negative."),
            (self.checkpoint_every >= 1, "Checkpoint interval must be at least 1 step."),
            (self.validate_every >= 0, "Validation interval cannot be negative (0 = only at the start and end)."),
            (self.keep_checkpoints >= 0, "The number of checkpoints to keep cannot be negative (0 = keep all)."),
            (self.mode in MODES, f"The mode must be one of {', '.join(MODES)}."),
            (self.micro_batch is None or self.micro_batch >= 1, "Micro-batch must be at least 1."),
            (self.optimizer in OPTIMIZERS, f"The optimizer must be one of {', '.join(OPTIMIZERS)}."),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingInputError(message)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: tuples become lists; unknown keys from `extra` are kept."""
        data = asdict(self)
        extra = data.pop("extra")
        data["target_modules"] = list(self.target_modules)
        data["validation_prompts"] = list(self.validation_prompts)
        return {**extra, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingParams:
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {key: value for key, value in data.items() if key in known}
        for key in ("target_modules", "validation_prompts"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values, extra={key: value for key, value in data.items() if key not in known})
