"""The text encoders' calls replayed from CUDA graphs: `TextEncoderGraphs`.

Encoding a prompt and its negative runs CLIP-L and OpenCLIP-bigG twice each: 88 transformer
layers of tiny matrices for 77 tokens, so the host's kernel launches, not the GPU, set the
time (34 ms of a 1.2 s picture on the H100, docs/BENCHMARKS.md). Every call has the same
shape, so after one eager warm-up call per encoder a graph captured on the next is replayed
for all later prompts.

A graph reads the weights at the addresses they had at capture. A lean-mode training parks
the encoders on the CPU and brings them back to new addresses, so each request checks the
addresses and captures again when they moved.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import ModelOutput

from engine.cuda_graphs import CapturedCall, on_side_stream
from engine.generation.forward_wrapping import wrapped_forward

log = logging.getLogger(__name__)


@dataclass
class _Graph:
    call: CapturedCall
    weights: list[int]  # the encoder's weight addresses at capture


def _weight_addresses(encoder: torch.nn.Module) -> list[int]:
    return [param.data_ptr() for param in encoder.parameters()]


def _cloned(output: ModelOutput) -> ModelOutput:
    """A copy the next replay cannot overwrite (the pipeline keeps the prompt's pooled embedding
    while it encodes the negative prompt with the same graph)."""
    fields = {key: tuple(t.clone() for t in value) if isinstance(value, tuple) else value.clone()
              for key, value in output.items()}
    return type(output)(**fields)


class TextEncoderGraphs:
    def __init__(self, encoders: list[torch.nn.Module]) -> None:
        self.encoders = encoders
        self._graphs: dict[tuple[torch.nn.Module, tuple[int, ...]], _Graph] = {}
        self._warmed: set[tuple[torch.nn.Module, tuple[int, ...]]] = set()
        self._failed = False

    def release(self) -> None:
        self._graphs.clear()
        self._warmed.clear()

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Inside, each encoder's plain call (token ids, all hidden states) goes through a graph."""
        self._drop_moved()
        with ExitStack() as stack:
            for encoder in self.encoders:
                stack.enter_context(wrapped_forward(encoder, self._forward_of(encoder)))
            yield

    def _forward_of(self, encoder: torch.nn.Module) -> Any:
        def forward(inner: Any, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self._failed or args or kwargs != {"output_hidden_states": True} or torch.is_grad_enabled():
                return inner(input_ids, *args, **kwargs)
            key = (encoder, tuple(input_ids.shape))
            graph = self._graphs.get(key)
            if graph is None:
                if key not in self._warmed:
                    self._warmed.add(key)
                    return on_side_stream(lambda: inner(input_ids, output_hidden_states=True))
                graph = self._capture(key, encoder, inner, input_ids)
                if graph is None:
                    return inner(input_ids, output_hidden_states=True)
            return _cloned(graph.call(input_ids))

        return forward

    def _drop_moved(self) -> None:
        """Forget graphs whose encoder's weights moved (a lean training parked them on the CPU)."""
        for key, graph in list(self._graphs.items()):
            if graph.weights != _weight_addresses(key[0]):
                del self._graphs[key]

    def _capture(self, key: tuple[torch.nn.Module, tuple[int, ...]], encoder: torch.nn.Module, inner: Any,
                 input_ids: torch.Tensor) -> _Graph | None:
        try:
            call = CapturedCall(lambda ids: inner(ids, output_hidden_states=True), (input_ids,))
        except Exception:  # a capture that fails must not fail the picture: eager from now on
            log.exception("capturing a text encoder as a CUDA graph failed; encoding prompts without CUDA graphs")
            self._failed = True
            self.release()
            return None
        graph = self._graphs[key] = _Graph(call, _weight_addresses(encoder))
        return graph
