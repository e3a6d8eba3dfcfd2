"""Pictures painted from prompt embeddings computed beforehand: a training's validation rounds and class images.

Both used to call the diffusers pipeline directly, eagerly and one batch at a time: a
validation round took 4.2-6.9 s on an H200 and a class image 3.3 s (docs/BENCHMARKS.md).
`Generator.render` paints them on the same fast path as `/imagine` (its UNet CUDA graphs,
its compiled blocks where the UNet's layers are the compiled ones, whole batches, its decode,
a LoRA merged into the weights as pets are), but keeps what makes the pictures what they were:
the model's own scheduler, guidance at every step, and one CPU generator per seed.
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
    steps: int
    guidance: float
    batch: int

    def parts(self) -> Iterator[tuple[PromptEmbeddings, PromptEmbeddings, Sequence[int]]]:
        for start in range(0, len(self.seeds), self.batch):
            part = slice(start, start + self.batch)
            yield self.prompts[part], self.negative[part], self.seeds[part]
