"""Prior-preservation images: what the base model draws for 'a photo of <class noun>'.

They are generated once per class into data/class-images/<slug>/0000.png, 0001.png, ...
(image i from seed i) and shared by every pet of that class, so the second cat owner
does not pay for them again; a run that wants more than exist generates only the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from engine.models import BaseModel
from engine.training.prompts import class_prompt
from engine.training.validation import decode_latents
from storage.files import DataDir, atomic_path

log = logging.getLogger(__name__)


def class_image_paths(data: DataDir, class_noun: str, count: int) -> list[Path]:
    folder = data.class_images_dir(class_noun)
    return [folder / f"{index:04d}.png" for index in range(count)]


@torch.no_grad()
def ensure_class_images(
    base: BaseModel,
    data: DataDir,
    class_noun: str,
    count: int,
    resolution: int,
    *,
    steps: int = 25,
    guidance: float = 5.0,
    batch: int = 1,
    on_image: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """The first `count` class images, generating the missing ones with the plain base model.

    `on_image(done, missing)` reports progress. Any LoRA adapters on the UNet are switched
    off while drawing: the prior is the base model's idea of the class.
    """
    paths = class_image_paths(data, class_noun, count)
    missing = [index for index, path in enumerate(paths) if not path.is_file()]
    if not missing:
        return paths
    log.info("generating %d class images for %r", len(missing), class_noun)
    unet = base.pipe.unet
    had_adapters = bool(getattr(unet, "peft_config", None))
    if had_adapters:
        unet.disable_adapters()
    try:
        prompt = class_prompt(class_noun)
        for done in range(0, len(missing), batch):
            indices = missing[done : done + batch]
            latents = base.pipe(
                prompt=[prompt] * len(indices),
                generator=[torch.Generator("cpu").manual_seed(index) for index in indices],
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=resolution,
                width=resolution,
                output_type="latent",
            ).images
            pixels, _ = decode_latents(base, latents)
            for index, image in zip(indices, base.pipe.image_processor.postprocess(pixels, output_type="pil")):
                with atomic_path(paths[index]) as tmp:
                    image.save(tmp, format="PNG")
            if on_image is not None:
                on_image(done + len(indices), len(missing))
    finally:
        if had_adapters:
            unet.enable_adapters()
    return paths
