"""Pictures painted from prompt embeddings computed beforehand: a training's validation rounds and class images.

`Generator.render` paints them with `/imagine`'s recipe (recipe.py) on `/imagine`'s fast path
(its UNet CUDA graphs, its compiled blocks where the UNet's layers are the compiled ones, whole
batches, its decode, a LoRA merged into the weights as pets are). The embeddings come from the
training's cache: during a training the text encoders are off the GPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass
class PromptEmbeddings:
    """What the UNet needs from the text encoders for one or more prompts."""

    embeds: torch.Tensor  # [n, 77, 2048]
    pooled: torch.Tensor  # [n, 1280]

    def __getitem__(self, part: slice | list[int]) -> PromptEmbeddings:
        return PromptEmbeddings(self.embeds[part], self.pooled[part])


@dataclass(frozen=True)
class Render:
    """Picture i from prompt i (against negative i) and seed i, square, `batch` pictures per pipeline call."""

    prompts: PromptEmbeddings
    negative: PromptEmbeddings
    seeds: Sequence[int]
    size: int
    batch: int

    def parts(self) -> Iterator[tuple[PromptEmbeddings, PromptEmbeddings, Sequence[int]]]:
        for start in range(0, len(self.seeds), self.batch):
            part = slice(start, start + self.batch)
            yield self.prompts[part], self.negative[part], self.seeds[part]
