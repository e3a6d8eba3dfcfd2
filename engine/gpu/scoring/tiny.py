"""Randomly initialised scoring models, written as real ones are: for tests and benchmarks.

The real transformers classes (ViTModel, CLIPModel) with their processors, saved with
`save_pretrained`, so they load through exactly the path real weights take. `tiny` models
are a few hundred kB and score in milliseconds on a CPU; `real` ones have the shapes of
DINO ViT-S/16 and CLIP ViT-B/32 (for timing and memory, not for meaningful numbers).
Their scores mean nothing, except that a picture is identical to itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

from engine.gpu.tiny_model import write_tokenizer

# ImageNet statistics, as DINO's preprocessor_config.json has them; CLIP's are its processor's defaults.
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def dino_config(real: bool) -> ViTConfig:
    if real:  # facebook/dino-vits16
        return ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                         image_size=224, patch_size=16, qkv_bias=True)
    return ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     image_size=32, patch_size=8)


def clip_config(real: bool, tokenizer: CLIPTokenizer) -> CLIPConfig:
    # The text tower finds each prompt's end by the tokenizer's own end-of-text id.
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if real:  # openai/clip-vit-base-patch32: transformers' defaults are its shapes
        return CLIPConfig(text_config={"vocab_size": 49408, **ids}, projection_dim=512)
    return CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 77, **ids},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )


def make_scoring_models(directory: Path, real: bool = False, seed: int = 0) -> tuple[Path, Path]:
    """Write a DINO and a CLIP model under `directory`; returns (dino folder, clip folder)."""
    torch.manual_seed(seed)
    dino_dir, clip_dir = Path(directory) / "dino", Path(directory) / "clip"
    side = 224 if real else 32
    ViTModel(dino_config(real), add_pooling_layer=False).save_pretrained(dino_dir)
    ViTImageProcessor(
        size={"height": side, "width": side}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    ).save_pretrained(dino_dir)
    tokenizer = write_tokenizer(clip_dir)  # a small byte-level BPE vocabulary, as for the tiny SDXL
    CLIPModel(clip_config(real, tokenizer)).save_pretrained(clip_dir)
    image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(clip_dir)
    return dino_dir, clip_dir
