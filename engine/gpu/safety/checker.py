"""The picture classifier: Stable Diffusion's safety checker, run on the worker's device.

Why this classifier (over a ViT NSFW classifier such as Falconsai/nsfw_image_detection, or both):
- its rule is readable: a CLIP ViT-L/14 image embedding against fixed concept embeddings,
  each with its own cosine threshold, so a test can flag exactly one picture by setting a
  concept to that picture's embedding, and an operator can see why a picture was flagged;
- CLIP was trained on web images of every style, and SDXL pictures are often paintings or
  renders; the ViT classifiers were fine-tuned on photos (Falconsai: 80k of them);
- its known false positives cost little here: under the default `standard` policy a
  flagged picture still reaches an age-restricted channel, as a spoiler.
Running both (a flag stands only when the ViT agrees) would cut false positives further,
but doubles the models to fetch and to run for a cost the policy already bounds.

Preprocessing runs on the device (resize, centre crop, normalise as the folder's
CLIPImageProcessor says): resizing a 1024² picture to 224² with PIL on the CPU costs about
as much as the whole classifier on a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPImageProcessor

from engine.gpu.scoring.models import ScorerUnavailable, fetch


class SafetyUnavailable(RuntimeError):
    """The classifier cannot be loaded; the message says which and why."""


@dataclass
class SafetyChecker:
    model: StableDiffusionSafetyChecker
    size: int  # the square side the vision tower takes (224 for CLIP ViT-L/14)
    mean: torch.Tensor  # (3,) normalisation of the processor
    std: torch.Tensor

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: torch.device, dtype: torch.dtype) -> SafetyChecker:
        self.model.to(device, dtype)
        return self

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(B, 3, size, size) normalised pixels on the device, as CLIPImageProcessor makes them."""
        batch = [self._pixels_one(image) for image in images]
        return torch.cat(batch).to(self.dtype)

    def _pixels_one(self, image: Image.Image) -> torch.Tensor:
        # 1. The picture on the device as (1, 3, H, W) floats in [0, 1].
        array = np.array(image.convert("RGB"))  # a writable copy: torch refuses read-only arrays
        pixels = torch.from_numpy(array).to(self.device).permute(2, 0, 1)[None].float() / 255
        # 2. The shortest edge to `size` (bicubic with antialiasing, as PIL resizes), then the centre square.
        height, width = pixels.shape[-2:]
        scale = self.size / min(height, width)
        resized = (max(self.size, round(height * scale)), max(self.size, round(width * scale)))
        pixels = F.interpolate(pixels, size=resized, mode="bicubic", antialias=True, align_corners=False)
        top, left = (resized[0] - self.size) // 2, (resized[1] - self.size) // 2
        pixels = pixels[..., top : top + self.size, left : left + self.size].clamp(0, 1)
        # 3. CLIP's normalisation.
        mean, std = self.mean.to(self.device)[:, None, None], self.std.to(self.device)[:, None, None]
        return (pixels - mean) / std

    @torch.no_grad()
    def embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The projected CLIP image embeddings the concepts are compared with (float32, not normalised)."""
        pooled = self.model.vision_model(self.pixels(images))[1]
        return self.model.visual_projection(pooled).float()

    @torch.no_grad()
    def flags(self, images: Sequence[Image.Image]) -> list[bool]:
        """True for each picture the checker flags (any concept over its threshold)."""
        if not images:
            return []
        clip_input = self.pixels(images)
        # The checker's own vectorised rule; it blackens flagged rows of `images`, here a placeholder.
        _, flagged = self.model.forward_onnx(clip_input, torch.zeros(len(images), 1, device=self.device))
        return [bool(value) for value in flagged.tolist()]


def load_safety_checker(source: str) -> SafetyChecker:
    """The checker from a local folder or hub id, on the CPU in float32, in eval mode."""
    try:
        folder = fetch(source)
    except ScorerUnavailable as error:
        raise SafetyUnavailable(str(error)) from None
    try:
        model = StableDiffusionSafetyChecker.from_pretrained(folder).float().eval()
        processor = CLIPImageProcessor.from_pretrained(folder)
    except Exception as error:  # noqa: BLE001 - a broken or foreign folder fails in many ways
        raise SafetyUnavailable(f"{source} is not a Stable Diffusion safety checker diffusers can load ({error})") from None
    size = processor.crop_size["height"] if processor.do_center_crop else processor.size["shortest_edge"]
    return SafetyChecker(model, int(size), torch.tensor(processor.image_mean), torch.tensor(processor.image_std))
