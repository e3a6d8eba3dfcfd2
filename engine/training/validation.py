"""Validation renders: the same prompts and seeds at every checkpoint, so steps compare like for like.

The pipeline runs from cached prompt embeddings (the text encoders may be off the GPU)
and returns latents; the decode happens here so a black or NaN picture from a half
precision VAE can be decoded again in fp32 instead of being shown to the user.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from PIL import Image

from engine.models import BaseModel
from engine.training.cache import PromptEmbeddings

log = logging.getLogger(__name__)

# Below this mean brightness (0..1) a picture counts as black.
BLACK_LEVEL = 0.02


def is_broken(images: torch.Tensor) -> bool:
    """NaN/inf anywhere, or any picture (of [n, 3, H, W] in [-1, 1]) black."""
    if not torch.isfinite(images).all():
        return True
    brightness = ((images.float() + 1) / 2).mean(dim=(1, 2, 3))
    return bool((brightness < BLACK_LEVEL).any())


@torch.no_grad()
def decode_latents(base: BaseModel, latents: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Decode SDXL latents to [-1, 1] pixels; falls back to an fp32 VAE when half precision breaks.

    Returns (pixels, used_fp32).
    """
    vae = base.pipe.vae
    pixels = _decode(vae, latents, vae.dtype)
    if not is_broken(pixels) or vae.dtype == torch.float32:
        return pixels, False
    log.warning("the VAE decoded black/NaN pictures in %s; decoding again in fp32", vae.dtype)
    original = vae.dtype
    vae.to(torch.float32)
    try:
        pixels = _decode(vae, latents, torch.float32)
    finally:
        vae.to(original)
    return pixels, True


def _decode(vae, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    config = vae.config
    latents = latents.to(dtype)
    if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(latents)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
    # One picture at a time: a batched 1024² decode needs several GiB more.
    return torch.cat([vae.decode(latent[None], return_dict=False)[0].float() for latent in latents])


@torch.no_grad()
def render(
    base: BaseModel,
    prompts: PromptEmbeddings,
    negative: PromptEmbeddings,
    seeds: Sequence[int],
    *,
    resolution: int,
    steps: int,
    guidance: float,
    batch: int,
) -> tuple[list[Image.Image], bool]:
    """One picture per prompt with its fixed seed; `batch` prompts go through the UNet together.

    Returns (pictures, used_fp32_vae). Seeds drive CPU generators, so a seed gives the same
    starting noise on any device.
    """
    pictures: list[Image.Image] = []
    used_fp32 = False
    for start in range(0, len(seeds), batch):
        part = slice(start, start + batch)
        latents = base.pipe(
            prompt_embeds=prompts.embeds[part],
            pooled_prompt_embeds=prompts.pooled[part],
            negative_prompt_embeds=negative.embeds[part],
            negative_pooled_prompt_embeds=negative.pooled[part],
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds[part]],
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=resolution,
            width=resolution,
            output_type="latent",
        ).images
        pixels, fp32 = decode_latents(base, latents)
        used_fp32 |= fp32
        pictures += base.pipe.image_processor.postprocess(pixels, output_type="pil")
    return pictures, used_fp32
