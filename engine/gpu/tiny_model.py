"""A tiny, randomly initialised SDXL pipeline for tests and smoke runs.

It uses the real diffusers/transformers classes with SDXL's structure (two CLIP text
encoders, text-time conditioning, an 8x VAE, Euler scheduler with SDXL's settings), only
much narrower, and is saved with `save_pretrained` so it loads through exactly the same
code path as real SDXL weights. Its pictures are noise: it exists to exercise the code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

# The characters CLIP's byte-level BPE maps printable ASCII to are the characters themselves.
_CHARS = [chr(c) for c in range(33, 127)]
_SPECIAL = ["<|startoftext|>", "<|endoftext|>"]
# A few merges so common words are single tokens, as in the real vocabulary.
_WORDS = ["a", "photo", "of", "cat", "dog", "tok", "the", "in", "on", "with", "painting", "portrait"]


def write_tokenizer(directory: Path) -> CLIPTokenizer:
    """A CLIP tokenizer with a small but valid BPE vocabulary (every ASCII character)."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens: list[str] = []
    for char in _CHARS:
        tokens += [char, char + "</w>"]
    merges: list[str] = []
    for word in _WORDS:
        # Merge left to right: p h -> ph, ph o -> pho, ... and finally the </w> form.
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            merges.append(f"{pieces[0]} {pieces[1]}")
            if merged not in tokens:
                tokens.append(merged)
            pieces = [merged] + pieces[2:]
    vocab = {token: index for index, token in enumerate(tokens + _SPECIAL)}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(directory, model_max_length=77, pad_token="<|endoftext|>")


def _text_config(tokenizer: CLIPTokenizer, hidden: int, layers: int, act: str) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=hidden,
        hidden_act=act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_pipeline(tokenizer_dir: Path, seed: int = 0) -> StableDiffusionXLPipeline:
    torch.manual_seed(seed)
    tokenizer = write_tokenizer(tokenizer_dir)
    text_encoder = CLIPTextModel(_text_config(tokenizer, 32, 2, "quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer, 32, 2, "gelu"))
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        cross_attention_dim=64,  # the two encoders' hidden states side by side: 32 + 32
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six size/crop numbers + pooled text
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16, 16),  # four blocks: 8x downsampling, as in SDXL
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=256,
        scaling_factor=0.13025,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )


def make_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Write the tiny pipeline to `directory` in the standard diffusers folder layout."""
    directory = Path(directory)
    pipeline = build_tiny_pipeline(directory / "_tokenizer_source", seed=seed)
    pipeline.save_pretrained(directory)
    for leftover in (directory / "_tokenizer_source").iterdir():
        leftover.unlink()
    (directory / "_tokenizer_source").rmdir()
    (directory / "README.txt").write_text(
        "A tiny, randomly initialised SDXL pipeline made by `pawtrait make-tiny-model`.\n"
        "It has SDXL's structure and loads like the real model, but it paints noise:\n"
        "use it for tests and smoke runs, never for pictures.\n",
        encoding="utf-8",
    )
    return directory
