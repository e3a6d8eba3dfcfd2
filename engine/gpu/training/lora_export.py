"""Writing a trained LoRA in the two formats people load.

- diffusers: `pytorch_lora_weights.safetensors`, for `pipeline.load_lora_weights` (our own
  generation, and anyone using diffusers), with the LoRA config in its metadata so a
  non-default alpha survives the round trip.
- kohya: one `.safetensors` with `lora_unet_<module path with underscores>.lora_down.weight`
  / `.lora_up.weight` / `.alpha` keys, the naming A1111 and ComfyUI read for SDXL; made
  with diffusers' own `convert_state_dict_to_kohya`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
from safetensors.torch import save_file

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"


def save_diffusers(folder: Path, lora: dict[str, torch.Tensor], config: dict) -> Path:
    """`lora` is the peft state dict of the UNet adapter (keys without the adapter name)."""
    StableDiffusionXLPipeline.save_lora_weights(
        save_directory=folder,
        unet_lora_layers=convert_state_dict_to_diffusers(lora),
        weight_name=DIFFUSERS_FILE,
        unet_lora_adapter_metadata=config,
    )
    return folder / DIFFUSERS_FILE


def to_kohya(lora: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """kohya/A1111 keys for the UNet LoRA; alpha is written per module (the converter assumes alpha = rank)."""
    converted = convert_state_dict_to_kohya({f"unet.{key}": value for key, value in lora.items()})
    return {
        key: torch.tensor(alpha, dtype=torch.float32) if key.endswith(".alpha") else value.contiguous()
        for key, value in converted.items()
    }


def save_kohya(path: Path, lora: dict[str, torch.Tensor], rank: int, alpha: float, name: str) -> Path:
    """The single-file LoRA, with the kohya metadata A1111 shows in its LoRA browser."""
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": json.dumps(alpha),
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_output_name": name,
        "ss_training_comment": "trained with Pawtrait (UNet attention LoRA, DreamBooth)",
    }
    save_file(to_kohya(lora, alpha), str(path), metadata=metadata)
    return path
