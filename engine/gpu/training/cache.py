"""Encode once, train many times: photo latents and prompt embeddings for a whole run.

The reference script runs an fp32 VAE encode of every image at every step (about as much
work as the UNet forward). The VAE and the text encoders are frozen, so their outputs are
computed here once per run, and the text encoders can leave the GPU for the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps

from engine.gpu.generation.renders import PromptEmbeddings
from engine.gpu.models import BaseModel

log = logging.getLogger(__name__)


@dataclass
class TrainingCache:
    latents: torch.Tensor  # [photos (x2 with flips: flipped copies follow), 4, h, w], fp32, on the device
    photos: int
    instance: PromptEmbeddings
    time_ids: torch.Tensor  # [1, 6]: original size, crop corner, target size (square crops)
    class_latents: torch.Tensor | None = None
    class_prompt: PromptEmbeddings | None = None
    validation: PromptEmbeddings | None = None
    validation_negative: PromptEmbeddings | None = None
    used_fp32_vae: bool = False


def load_square(path: Path, resolution: int) -> torch.Tensor:
    """A photo as a [3, res, res] tensor in [-1, 1], centre-cropped to a square if it is not one."""
    with Image.open(path) as image:
        image = ImageOps.fit(image.convert("RGB"), (resolution, resolution), Image.Resampling.LANCZOS)
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(resolution, resolution, 3).permute(2, 0, 1).float() / 127.5 - 1.0


@torch.no_grad()
def encode_latents(base: BaseModel, pixels: torch.Tensor, batch: int) -> tuple[torch.Tensor, bool]:
    """Scaled VAE latent means (fp32) of [n, 3, H, W] pixels; re-encode in fp32 if half precision gave NaN/inf.

    Returns (latents, used_fp32). The fp16-safe VAE should never need the fallback; SDXL's
    own VAE in fp16 does, and training on NaN latents would silently ruin the LoRA.
    """
    vae = base.pipe.vae
    latents = _encode(vae, pixels, batch, vae.dtype, base.device)
    if torch.isfinite(latents).all():
        return latents, False
    log.warning("the VAE gave NaN/inf latents in %s; encoding again in fp32", vae.dtype)
    original = vae.dtype
    vae.to(torch.float32)
    try:
        latents = _encode(vae, pixels, batch, torch.float32, base.device)
    finally:
        vae.to(original)
    if not torch.isfinite(latents).all():
        raise RuntimeError("the VAE produced NaN latents even in fp32; the photos or the VAE weights are broken")
    return latents, True


def _encode(vae, pixels: torch.Tensor, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    out = []
    for start in range(0, len(pixels), batch):
        chunk = pixels[start : start + batch].to(device=device, dtype=dtype)
        mean = vae.encode(chunk).latent_dist.mode()
        out.append((mean.float() - shift) * vae.config.scaling_factor)
    return torch.cat(out)


@torch.no_grad()
def encode_prompts(base: BaseModel, prompts: Sequence[str]) -> PromptEmbeddings:
    embeds, _, pooled, _ = base.pipe.encode_prompt(
        prompt=list(prompts), device=base.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return PromptEmbeddings(embeds=embeds.to(base.dtype), pooled=pooled.to(base.dtype))


def no_negative(base: BaseModel, prompts: PromptEmbeddings) -> PromptEmbeddings:
    """The negative side the pipeline uses when there is no negative prompt: zeros where the
    model asks for them (SDXL does), else the empty prompt's embeddings."""
    if base.pipe.config.force_zeros_for_empty_prompt:
        return PromptEmbeddings(torch.zeros_like(prompts.embeds), torch.zeros_like(prompts.pooled))
    return encode_prompts(base, [""] * len(prompts.embeds))


def build_cache(
    base: BaseModel,
    photo_paths: Sequence[Path],
    prompt: str,
    resolution: int,
    *,
    flip: bool,
    class_paths: Sequence[Path] = (),
    class_prompt: str | None = None,
    validation_prompts: Sequence[str] = (),
    encode_batch: int = 4,
) -> TrainingCache:
    """Everything the loop and the validation renders need from the VAE encoder and the text encoders."""
    pixels = torch.stack([load_square(path, resolution) for path in photo_paths])
    if flip:
        pixels = torch.cat([pixels, pixels.flip(-1)])
    latents, fp32_photos = encode_latents(base, pixels, encode_batch)
    cache = TrainingCache(
        latents=latents,
        photos=len(photo_paths),
        instance=encode_prompts(base, [prompt]),
        time_ids=torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], device=base.device),
        used_fp32_vae=fp32_photos,
    )
    if class_paths:
        class_pixels = torch.stack([load_square(path, resolution) for path in class_paths])
        cache.class_latents, fp32_class = encode_latents(base, class_pixels, encode_batch)
        cache.class_prompt = encode_prompts(base, [class_prompt or ""])
        cache.used_fp32_vae |= fp32_class
    if validation_prompts:
        cache.validation = encode_prompts(base, validation_prompts)
        cache.validation_negative = no_negative(base, cache.validation)  # as `/imagine` paints without a negative prompt
    return cache


def offload_encoders(base: BaseModel) -> None:
    """Move the text encoders (1.6 GB in half precision) to the CPU: the loop and validation use cached embeddings.

    The VAE stays (170 MB): validation decodes with it, and the pipeline takes its device
    from the VAE's first parameter.
    """
    encoders = [m for m in (base.pipe.text_encoder, base.pipe.text_encoder_2) if m is not None]
    if all(m.device.type == "cpu" for m in encoders):
        return  # already off (the common case when called again after a generation between steps)
    for module in encoders:
        module.to("cpu")
    if base.device.type == "cuda":
        torch.cuda.empty_cache()


def restore_encoders(base: BaseModel) -> None:
    """Put everything back on the device, as generation expects it."""
    pipe = base.pipe
    for module in (pipe.text_encoder, pipe.text_encoder_2):
        if module is not None:
            module.to(base.device)
