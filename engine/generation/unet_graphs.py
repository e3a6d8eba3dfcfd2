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

import logging
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from engine.cuda_graphs import CapturedCall, on_side_stream
from engine.generation.forward_wrapping import wrapped_forward

log = logging.getLogger(__name__)

# Shapes whose graphs are kept: a request's size and count fix two shapes (guided steps run
# the negative and the prompt together, steps outside the guidance interval the prompt alone),
# so four cover the usual back-and-forth of one image and four; they share one pool, which
# the largest shape bounds.
DEFAULT_SHAPES = 4
Key = tuple[tuple[tuple[int, ...], torch.dtype], ...]


class UNetGraphs:
    def __init__(self, unet: UNet2DConditionModel, shapes: int = DEFAULT_SHAPES) -> None:
        self.unet = unet
        self.shapes = shapes
        self._graphs: OrderedDict[Key, CapturedCall] = OrderedDict()
        self._warmed: set[Key] = set()
        self._pool: Any = None
        self._failed = False

    def release(self) -> None:
        """Drop every graph and its memory (the next calls warm up and capture again)."""
        self._graphs.clear()
        self._warmed.clear()
        self._pool = None

    @contextmanager
    def serving(self, release_after: bool = False) -> Iterator[None]:
        """Inside, the UNet's inference calls go through the graphs; outside it is untouched.

        The caller keeps the UNet's layers as they were at capture: the same weight tensors
        (values may change in place) and the same adapters switched off.
        """
        try:
            with wrapped_forward(self.unet, self._forward):
                yield
        finally:
            if release_after:
                self.release()

    def _forward(
        self,
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
            self._failed or rest or timestep_cond is not None or cross_attention_kwargs
            or torch.is_grad_enabled() or set(added) != {"text_embeds", "time_ids"}
        ):
            return eager()
        inputs = (
            sample, torch.as_tensor(timestep, device=sample.device), encoder_hidden_states,
            added["text_embeds"], added["time_ids"],
        )
        key: Key = tuple((tuple(tensor.shape), tensor.dtype) for tensor in inputs)
        call = self._graphs.get(key)
        if call is None:
            if key not in self._warmed:
                self._warmed.add(key)
                return on_side_stream(eager)
            call = self._capture(key, original, inputs)
            if call is None:
                return eager()
        self._graphs.move_to_end(key)
        out = call(*inputs).clone()  # the graph's output is overwritten by the next replay
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)

    def _capture(self, key: Key, original: Any, inputs: tuple[torch.Tensor, ...]) -> CapturedCall | None:
        while len(self._graphs) >= self.shapes:
            self._graphs.popitem(last=False)

        def unet(sample: torch.Tensor, timestep: torch.Tensor, hidden: torch.Tensor, text: torch.Tensor,
                 time_ids: torch.Tensor) -> torch.Tensor:
            conditioning = {"text_embeds": text, "time_ids": time_ids}
            return original(sample, timestep, hidden, added_cond_kwargs=conditioning, return_dict=False)[0]

        try:
            call = CapturedCall(unet, inputs, pool=self._pool)
        except Exception:  # a capture that fails must not fail the picture: eager from now on
            log.exception("capturing the UNet as a CUDA graph failed; generating without CUDA graphs")
            self._failed = True
            self.release()
            return None
        self._pool = call.pool()
        self._graphs[key] = call
        log.info("UNet captured as a CUDA graph for inputs %s", [shape for shape, _ in key])
        return call
