"""The denoising loop's UNet calls replayed from CUDA graphs: `UNetGraphs`.

At batch 1 an SDXL step on the H100 costs more host time (launching ~2,000 kernels through
Python) than GPU time (docs/BENCHMARKS.md). Inside `UNetGraphs.serving()` every plain
inference call of the UNet (no gradients, SDXL's usual conditioning) runs from a graph
captured for its input shapes: the first call of a new shape runs eagerly as the warm-up,
the second captures, later ones only copy their inputs in and replay. A pet merged into the
weights is picked up by the graph, because merging changes the weights in place.

Graphs are kept for the few most recent shapes and share one memory pool (they never run
at the same time). `release()` frees them, e.g. before a training needs the memory; a
generation served while a training is paused releases them right after the picture.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from engine.gpu.cuda_graphs import GraphsByKey
from engine.gpu.forward_wrapping import wrapped_forward

# Shapes whose graphs are kept: a request's size and count fix two shapes (guided steps run
# the negative and the prompt together, steps outside the guidance interval the prompt alone),
# so four cover the usual back-and-forth of one image and four; they share one pool, which
# the largest shape bounds.
DEFAULT_SHAPES = 4


class UNetGraphs:
    def __init__(self, unet: UNet2DConditionModel, shapes: int = DEFAULT_SHAPES) -> None:
        self.unet = unet
        self.graphs = GraphsByKey("the UNet", capacity=shapes)

    def release(self) -> None:
        """Drop every graph and its memory (the next calls warm up and capture again)."""
        self.graphs.release()

    @contextmanager
    def serving(self, release_after: bool = False, compiled: bool = False) -> Iterator[None]:
        """Inside, the UNet's inference calls go through the graphs; outside it is untouched.

        The caller keeps the UNet's layers as they were at capture: the same weight tensors
        (values may change in place) and the same adapters switched off. `compiled` says the
        blocks run their compiled code: those calls get graphs of their own.
        """
        try:
            with wrapped_forward(self.unet, functools.partial(self._forward, compiled)):
                yield
        finally:
            if release_after:
                self.release()

    def _forward(
        self,
        compiled: bool,
        original: Any,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = True,
        **rest: Any,
    ) -> Any:
        def eager() -> Any:
            return original(
                sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond,
                cross_attention_kwargs=cross_attention_kwargs, added_cond_kwargs=added_cond_kwargs,
                return_dict=return_dict, **rest,
            )

        added = added_cond_kwargs or {}
        if (
            rest or timestep_cond is not None or cross_attention_kwargs
            or torch.is_grad_enabled() or set(added) != {"text_embeds", "time_ids"}
        ):
            return eager()

        def unet(sample: torch.Tensor, timestep: torch.Tensor, hidden: torch.Tensor, text: torch.Tensor,
                 time_ids: torch.Tensor) -> torch.Tensor:
            conditioning = {"text_embeds": text, "time_ids": time_ids}
            return original(sample, timestep, hidden, added_cond_kwargs=conditioning, return_dict=False)[0]

        def finish(out: torch.Tensor) -> Any:
            out = out.clone()  # the graph's output is overwritten by the next replay
            return UNet2DConditionOutput(sample=out) if return_dict else (out,)

        inputs = (
            sample, torch.as_tensor(timestep, device=sample.device), encoder_hidden_states,
            added["text_embeds"], added["time_ids"],
        )
        key = (compiled, *((tuple(tensor.shape), tensor.dtype) for tensor in inputs))
        return self.graphs.call(key, unet, inputs, eager, finish)
