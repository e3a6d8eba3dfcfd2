"""The arithmetic SDXL's UNet must do for a picture and for a training step, counted on the CPU.

Builds SDXL-base-1.0's UNet on the meta device (no memory, no weights) and counts the
floating-point operations of one forward per 1024² image, and of a fast-mode training
step (4 images, forward and backward, the product's rank-4 LoRA). Against a card's rate
those give the least time any implementation needs: the floors that the issue-13 targets
are measured against in docs/BENCHMARKS.md.

    python benchmarks/flops_sdxl.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdxl_random import UNET_CONFIG

from engine.usecases.training.params import TrainingParams


def unet_inputs(batch: int) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    def meta(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, device="meta", dtype=torch.bfloat16)

    args = (meta(batch, 4, 128, 128), torch.full((batch,), 500, device="meta"), meta(batch, 77, 2048))
    return args, {"text_embeds": meta(batch, 1280), "time_ids": meta(batch, 6)}


def counted(run) -> tuple[float, dict[str, float]]:
    with FlopCounterMode(display=False) as counter:
        run()
    by_op = {str(op): round(flops / 1e12, 2) for op, flops in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops() / 1e12, by_op


def phase_picture(unet: UNet2DConditionModel) -> tuple[float, dict[str, float]]:
    """One forward over one 1024² image, as painting does it (no gradients)."""
    args, cond = unet_inputs(1)
    with torch.no_grad():
        return counted(lambda: unet(*args, added_cond_kwargs=cond))


def phase_training_step(unet: UNet2DConditionModel, params: TrainingParams) -> tuple[float, dict[str, float]]:
    """A fast-mode step: forward and backward over its images with the product's LoRA added (for good)."""
    with torch.device("meta"):
        unet.add_adapter(LoraConfig(r=params.rank, lora_alpha=params.lora_alpha, init_lora_weights="gaussian",
                                    target_modules=list(params.target_modules)))
    unet.train()
    args, cond = unet_inputs(params.unet_images_per_step)
    return counted(lambda: unet(*args, added_cond_kwargs=cond).sample.float().square().mean().backward())


def main() -> int:
    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET_CONFIG).to(torch.bfloat16).requires_grad_(False)
    params = TrainingParams()
    picture, picture_ops = phase_picture(unet)
    step, step_ops = phase_training_step(unet, params)
    print(f"one UNet pass over one 1024² image: {picture:.2f} TFLOP  {picture_ops}")
    print(f"one fast-mode training step ({params.unet_images_per_step} images, forward and backward, "
          f"rank-{params.rank} LoRA): {step:.2f} TFLOP  {step_ops}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
