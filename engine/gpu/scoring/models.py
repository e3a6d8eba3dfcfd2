"""The scoring models and what they compute: DINO and CLIP image embeddings, CLIP text embeddings.

Each model comes from a local folder or a hub id through transformers (`AutoModel` + image
processor for DINO, `CLIPModel` + processor for CLIP). A hub id is fetched with
`snapshot_download` first and loaded from the resulting folder: offline, that fails in under
a second, where `from_pretrained(hub_id)` retries every file for about 50 s (measured here).

Embeddings are L2-normalised float32, so a dot product is a cosine similarity. DINO's is the
[CLS] token of the last layer, CLIP's the projected pooled output: what the DreamBooth paper
compares.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoProcessor, CLIPModel

# What loading needs from a hub repository (configs, tokenizer files, weights), not its
# TensorFlow/Flax/ONNX copies.
_FILES = ["*.json", "*.txt", "*.safetensors"]
_LEGACY_WEIGHTS = "pytorch_model.bin"  # repositories that never got a safetensors file


class ScorerUnavailable(RuntimeError):
    """A scoring model cannot be loaded; the message says which and why."""


def fetch(source: str) -> Path:
    """The local folder of a model: `source` itself, or the hub id's files in the hub cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if source.startswith(("/", "./", "../", "~")):
        raise ScorerUnavailable(f"there is no folder {source}")
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(source, allow_patterns=_FILES))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(source, allow_patterns=[*_FILES, _LEGACY_WEIGHTS]))
    except Exception as error:  # noqa: BLE001 - offline, unknown repository, gated, disk full: all say the same
        raise ScorerUnavailable(f"{source} could not be downloaded from the hub ({error})") from None
    return folder


def _rgb(images: Sequence[Image.Image]) -> list[Image.Image]:
    return [image if image.mode == "RGB" else image.convert("RGB") for image in images]


@dataclass
class ScoringModels:
    dino: torch.nn.Module
    dino_processor: Any
    clip: CLIPModel
    clip_processor: Any
    # The CPU copy of every weight while the models work elsewhere (see `place`).
    _home: list[torch.Tensor] | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.clip.parameters()).dtype

    def _tensors(self) -> list[torch.Tensor]:
        return [
            tensor for module in (self.dino, self.clip) for tensor in (*module.parameters(), *module.buffers())
        ]

    def place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Work on `device`, floating-point weights in `dtype`, until `home()`.

        The CPU copy is kept (pinned, in `dtype`) while the models are on a GPU, so going home
        drops the GPU copy instead of copying 0.35 GB back: on the H200 that copy was 0.29 s of
        a 0.44 s scoring round, and pinned memory makes the trip out 0.1 s faster too
        (benchmarks/score_gpu.py, docs/BENCHMARKS.md).
        """
        tensors = self._tensors()
        if self._home is None:
            pin = device.type == "cuda"
            self._home = [_home_copy(tensor.data, dtype, pin) for tensor in tensors]
        for tensor, home in zip(tensors, self._home):
            tensor.data = home if device.type == "cpu" else home.to(device, non_blocking=True)

    def home(self) -> None:
        """Back on the CPU: the GPU copy is dropped (its memory returns to torch's cache)."""
        if self._home is not None:
            for tensor, home in zip(self._tensors(), self._home):
                tensor.data = home

    def _pixels(self, processor: Any, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = processor(images=_rgb(images), return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, self.dtype)

    @torch.no_grad()
    def dino_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        hidden = self.dino(pixel_values=self._pixels(self.dino_processor, images)).last_hidden_state
        return F.normalize(hidden[:, 0].float(), dim=-1)

    @torch.no_grad()
    def clip_image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        # The vision tower and projection directly: get_image_features returns a tensor in
        # transformers 4 and an output object in 5.
        pooled = self.clip.vision_model(pixel_values=self._pixels(self.clip_processor.image_processor, images))
        return F.normalize(self.clip.visual_projection(pooled.pooler_output).float(), dim=-1)

    @torch.no_grad()
    def clip_text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.clip_processor.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.clip.config.text_config.max_position_embeddings,
            return_tensors="pt",
        ).to(self.device)
        pooled = self.clip.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return F.normalize(self.clip.text_projection(pooled.pooler_output).float(), dim=-1)


def _home_copy(tensor: torch.Tensor, dtype: torch.dtype, pin: bool) -> torch.Tensor:
    copy = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return copy.pin_memory() if pin else copy


def load_models(dino_source: str, clip_source: str) -> ScoringModels:
    """Both models on the CPU in float32, in eval mode; raises ScorerUnavailable with the reason."""
    dino_folder, clip_folder = fetch(dino_source), fetch(clip_source)
    try:
        # DINO checkpoints have no pooler: without this ViTModel would add a random one (and say so).
        extra = {"add_pooling_layer": False} if _model_type(dino_folder) == "vit" else {}
        dino = AutoModel.from_pretrained(dino_folder, **extra).float()
        dino_processor = AutoImageProcessor.from_pretrained(dino_folder)
    except Exception as error:  # noqa: BLE001 - a broken or foreign folder fails in many ways
        raise ScorerUnavailable(f"{dino_source} is not a DINO/ViT model transformers can load ({error})") from None
    try:
        clip = CLIPModel.from_pretrained(clip_folder).float()
        clip_processor = AutoProcessor.from_pretrained(clip_folder)
    except Exception as error:  # noqa: BLE001
        raise ScorerUnavailable(f"{clip_source} is not a CLIP model transformers can load ({error})") from None
    return ScoringModels(dino.eval(), dino_processor, clip.eval(), clip_processor)


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None
