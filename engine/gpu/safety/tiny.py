"""A randomly initialised safety checker, written as the real one is: for tests and benchmarks.

The real diffusers class with a CLIPImageProcessor, saved with `save_pretrained`, so it loads
through exactly the path real weights take. `real` gives CLIP ViT-L/14's shapes
(CompVis/stable-diffusion-safety-checker) for timing and memory. Its concepts never flag
anything unless `flag` names embeddings: each becomes a concept with threshold `threshold`,
so a picture whose own embedding is given is flagged and pictures unlike it are not.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig, CLIPImageProcessor

NEVER = 2.0  # a cosine similarity is at most 1: a concept with this threshold never flags


def safety_config(real: bool) -> CLIPConfig:
    if real:  # CompVis/stable-diffusion-safety-checker: CLIP ViT-L/14 at 224²
        vision = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                  "image_size": 224, "patch_size": 14}
        return CLIPConfig(vision_config=vision, projection_dim=768)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 8}
    return CLIPConfig(vision_config=vision, projection_dim=16)


def build_safety_checker(real: bool = False, seed: int = 0) -> StableDiffusionSafetyChecker:
    """The model in memory, with concepts that flag nothing."""
    torch.manual_seed(seed)
    model = StableDiffusionSafetyChecker(safety_config(real)).eval()
    with torch.no_grad():
        model.concept_embeds.normal_()
        model.special_care_embeds.normal_()
        model.concept_embeds_weights.fill_(NEVER)
        model.special_care_embeds_weights.fill_(NEVER)
    return model


def make_safety_checker(
    directory: Path, real: bool = False, flag: torch.Tensor | None = None, threshold: float = 0.999, seed: int = 0,
) -> Path:
    """Write the checker to `directory` (the same random weights for the same seed); returns it.

    `flag`: (N, projection) embeddings, N <= 17, that become concepts flagging anything within
    `threshold` cosine similarity of them.
    """
    model = build_safety_checker(real, seed)
    if flag is not None:
        with torch.no_grad():
            model.concept_embeds[: len(flag)] = flag
            model.concept_embeds_weights[: len(flag)] = threshold
    side = model.config.vision_config.image_size
    model.save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(directory)
    return Path(directory)
