"""The models the benchmarks drive: SDXL-base-1.0's exact architecture with random weights, built
directly on the device, or the product's tiny model for a dry run on the CPU.

No weights can be downloaded where the benchmarks run, and speed and memory do not depend
on weight values. The numbers are SDXL-base-1.0's (shared/README.md); the UNet's parameter
count is asserted so a typo cannot make a benchmark measure a different model.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from config.settings import Settings
from engine.gpu.models import BaseModel, load_base_model, prepare_device
from engine.gpu.tiny_model import write_tokenizer

SDXL_UNET_PARAMS = 2_567_463_684


def clip_config(vocab: int, hidden: int, layers: int, heads: int, act: str) -> CLIPTextConfig:
    # A small valid BPE vocabulary is fine for speed: sequences are padded to 77 tokens either way.
    return CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                          num_attention_heads=heads, max_position_embeddings=77, projection_dim=1280, hidden_act=act,
                          bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)


# SDXL-base-1.0's UNet (2,567,463,684 parameters).
UNET_CONFIG = dict(
    sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280),
    layers_per_block=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)


def build_sdxl(device: torch.device, dtype: torch.dtype, tokenizer_dir: Path) -> StableDiffusionXLPipeline:
    """UNet, VAE and both text encoders created on `device` in `dtype` (seconds on a GPU), frozen."""
    tokenizer = write_tokenizer(tokenizer_dir)
    vocab = len(tokenizer)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            unet = UNet2DConditionModel(**UNET_CONFIG)
            vae = AutoencoderKL(
                in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                latent_channels=4, layers_per_block=2, sample_size=1024, scaling_factor=0.13025, force_upcast=False,
            )
            text_encoder = CLIPTextModel(clip_config(vocab, 768, 12, 12, "quick_gelu"))
            text_encoder_2 = CLIPTextModelWithProjection(clip_config(vocab, 1280, 32, 20, "gelu"))
    finally:
        torch.set_default_dtype(previous)
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.to(dtype)  # a few parameters (conv biases) are created in float32 regardless
        module.requires_grad_(False)
    count = sum(p.numel() for p in unet.parameters())
    assert count == SDXL_UNET_PARAMS, f"UNet has {count} parameters, SDXL-base-1.0 has {SDXL_UNET_PARAMS}"
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                     add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_base(tokenizer_dir: Path) -> BaseModel:
    """Random SDXL-base-1.0 on the GPU, as the resident base model the worker would hold: on the
    device, in the precision (PAWTRAIT_DTYPE) and under the memory cap (PAWTRAIT_GPU_MEMORY_GIB)
    `load_base_model` would use."""
    device, dtype = prepare_device(Settings.from_env())
    pipe = build_sdxl(device, dtype, tokenizer_dir)
    return BaseModel(pipe=pipe, device=device, dtype=dtype, model_id="random SDXL-base-1.0", vae_id=None)


def base_model(tiny: Path | None, work: Path) -> BaseModel:
    """The tiny model in `tiny` loaded on the CPU as the worker loads a model (a dry run), else
    `random_base` with its tokenizer written in `work`."""
    if tiny:
        return load_base_model(Settings(model=str(tiny), vae=None, device="cpu"))
    return random_base(work / "tokenizer")


def save_random_sdxl(model_dir: Path, tokenizer_dir: Path) -> float:
    """Random SDXL-base-1.0 in bf16 saved as `save_pretrained` writes a downloaded one; returns the
    seconds the saving took. The GPU copy is dropped: a worker or command started after gets the GPU
    to itself (this process keeps only its context)."""
    pipe = build_sdxl(torch.device("cuda"), torch.bfloat16, tokenizer_dir)
    started = time.perf_counter()
    pipe.save_pretrained(model_dir)
    seconds = time.perf_counter() - started
    del pipe
    torch.cuda.empty_cache()
    return seconds
