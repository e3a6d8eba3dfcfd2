"""Loading the SDXL base model: a hub id or a local folder, through one code path.

Tests load the tiny model (`pawtrait make-tiny-model`) through this same function, so what
they exercise is what runs with real weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline

from config.settings import Settings
from engine.gpu.compile import keep_compiled_code_in
from engine.gpu.device import (
    PrecisionUnavailable,
    compute_dtype,
    limit_gpu_memory,
    reduce_fragmentation,
    resolve_device,
)
from storage.files import DataDir


class ModelNotFound(RuntimeError):
    """The configured base model or VAE cannot be loaded (or not in the precision PAWTRAIT_DTYPE asks for);
    the message says what to set."""


@dataclass
class BaseModel:
    """The resident SDXL pipeline with where it runs and in which precision."""

    pipe: StableDiffusionXLPipeline
    device: torch.device
    dtype: torch.dtype
    model_id: str
    vae_id: str | None


def describe_source(source: str) -> str:
    """'local folder', 'hub id' or 'missing' for `pawtrait doctor`."""
    path = Path(source).expanduser()
    if path.is_dir():
        return "local folder" if (path / "model_index.json").is_file() or (path / "config.json").is_file() else "missing"
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        return "missing"
    return "hub id"


def _load_vae(vae_id: str, dtype: torch.dtype) -> AutoencoderKL:
    path = Path(vae_id).expanduser()
    # A local folder may be a whole pipeline (with vae/) or just the VAE.
    subfolder = "vae" if (path / "vae").is_dir() else None
    return AutoencoderKL.from_pretrained(vae_id, subfolder=subfolder, dtype=dtype)


def prepare_device(settings: Settings) -> tuple[torch.device, torch.dtype]:
    """The device and precision to hold the base model in, with the allocator set up for it
    (PAWTRAIT_GPU_MEMORY_GIB's cap, expandable segments on small cards): before any weights,
    since the cap is measured against what the CUDA context alone takes."""
    device = resolve_device(settings.device)
    reduce_fragmentation(device, settings.gpu_memory_gib)
    limit_gpu_memory(device, settings.gpu_memory_gib)
    try:
        return device, compute_dtype(device, settings.dtype)
    except PrecisionUnavailable as error:
        raise ModelNotFound(str(error)) from None


def load_base_model(settings: Settings) -> BaseModel:
    """Load SDXL (and the fp16-safe VAE unless PAWTRAIT_VAE is empty) onto the device in half precision."""
    if settings.compile or settings.compile_training:
        keep_compiled_code_in(DataDir(settings.data_dir).compile_cache_dir())
    device, dtype = prepare_device(settings)
    try:
        extra = {}
        if settings.vae:
            extra["vae"] = _load_vae(settings.vae, dtype)
        pipe = StableDiffusionXLPipeline.from_pretrained(settings.model, dtype=dtype, add_watermarker=False, **extra)
    except (OSError, ValueError) as error:
        raise ModelNotFound(
            f"could not load the base model {settings.model!r} / VAE {settings.vae!r}: {error}. "
            "Set PAWTRAIT_MODEL (and PAWTRAIT_VAE) to a local folder or a hub id you can download."
        ) from error
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return BaseModel(pipe=pipe, device=device, dtype=dtype, model_id=settings.model, vae_id=settings.vae)
