"""The A1111/ComfyUI file: a checkpoint's stored kohya LoRA (fp32) in fp16, half the size and the
precision those tools run it in, with the metadata their LoRA browsers and Civitai read.

Key names and value formats follow kohya sd-scripts (`train_network.py` writes the `ss_*` keys,
every value through str(); `sdxl_train_network.py` names the base `sdxl_base_v1-0`) and Stability
AI's ModelSpec (`modelspec.*`, with the architecture and implementation sd-scripts'
`library/sai_model_spec.py` gives an SDXL LoRA).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save

from engine.usecases.export.choice import Chosen
from engine.usecases.export.naming import base_model_name, lora_stem, trigger_words

SDXL_BASE_VERSION = "sdxl_base_v1-0"
MODELSPEC = {
    "modelspec.sai_model_spec": "1.0.0",
    "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
    "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
    "modelspec.prediction_type": "epsilon",
    "modelspec.license": "CreativeML Open RAIL++-M",
}
# sd-scripts writes the optimizer's class path.
OPTIMIZER_CLASSES = {"adamw8bit": "bitsandbytes.optim.adamw.AdamW8bit", "adamw": "torch.optim.adamw.AdamW"}


def download_metadata(chosen: Chosen, base_model: str, photos: int) -> dict[str, str]:
    """The header of the download: what the LoRA is, how to trigger it and how it was trained."""
    pet, params, step = chosen.pet, chosen.params, chosen.checkpoint.step
    trigger = trigger_words(pet)
    size = params.resolution
    return {
        "ss_output_name": lora_stem(pet, step),
        "ss_sd_model_name": base_model_name(base_model),
        "ss_base_model_version": SDXL_BASE_VERSION,
        "ss_v2": "False",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(params.rank),
        "ss_network_alpha": str(params.lora_alpha),
        "ss_steps": str(step),
        "ss_max_train_steps": str(params.steps),
        "ss_learning_rate": str(params.learning_rate),
        "ss_unet_lr": str(params.learning_rate),
        "ss_lr_scheduler": params.lr_scheduler,
        "ss_lr_warmup_steps": str(params.lr_warmup_steps),
        "ss_optimizer": OPTIMIZER_CLASSES.get(params.optimizer, params.optimizer),
        "ss_batch_size_per_device": str(params.batch_size),
        "ss_gradient_accumulation_steps": str(params.gradient_accumulation),
        "ss_total_batch_size": str(params.images_per_step),
        "ss_resolution": f"({size}, {size})",
        "ss_flip_aug": str(params.flip),
        "ss_seed": str(params.seed),
        "ss_min_snr_gamma": str(params.snr_gamma or None),  # 0 = off, which sd-scripts writes as None
        "ss_max_grad_norm": str(params.max_grad_norm),
        "ss_num_train_images": str(photos),
        "ss_num_reg_images": str(params.class_images if params.prior_preservation else 0),
        "ss_prior_loss_weight": str(params.prior_loss_weight),
        # A DreamBooth folder '<repeats>_<instance prompt>' whose one caption is the trigger: the
        # tags A1111's LoRA card offers to put into the prompt.
        "ss_tag_frequency": json.dumps({f"1_{trigger}": {trigger: photos}}),
        "ss_training_comment": f"Pawtrait DreamBooth LoRA of {pet.name}, a {pet.class_noun}. Trigger words: {trigger}",
        **MODELSPEC,
        "modelspec.title": f"{pet.name} ({pet.class_noun}), step {step}",
        "modelspec.description": (
            f"{pet.name}, a {pet.class_noun}, learnt by Pawtrait with DreamBooth: an SDXL UNet LoRA, "
            f"step {step} of {params.steps}. Write '{trigger}' where {pet.name} goes, e.g. '{pet.instance_prompt}'."
        ),
        "modelspec.date": chosen.checkpoint.created_at,
        "modelspec.resolution": f"{size}x{size}",
        "modelspec.trigger_phrase": trigger,
        "modelspec.usage_hint": f"Trigger words: {trigger}",
    }


def fp16_file(source: Path, metadata: dict[str, str]) -> bytes:
    """The LoRA file at `source` with every tensor in fp16, `metadata`, and ModelSpec's hash of the tensor data."""
    tensors = {key: value.astype(np.float16) for key, value in load_file(source).items()}
    data = save(tensors)
    header_size = int.from_bytes(data[:8], "little")
    digest = hashlib.sha256(data[8 + header_size :]).hexdigest()
    return save(tensors, metadata={**metadata, "modelspec.hash_sha256": f"0x{digest}"})
