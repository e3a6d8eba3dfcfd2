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

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from transformers.utils import ModelOutput

from engine.gpu.cuda_graphs import GraphsByKey
from engine.gpu.forward_wrapping import wrapped_forward


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
        self.graphs = GraphsByKey("a text encoder")
        self._addresses: dict[torch.nn.Module, list[int]] = {}  # each encoder's weights when last served

    def release(self) -> None:
        self.graphs.release()

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Inside, each encoder's plain call (token ids, all hidden states) goes through a graph."""
        for encoder in self.encoders:
            addresses = _weight_addresses(encoder)
            if self._addresses.get(encoder) != addresses:  # moved (a lean training parked it on the CPU)
                self.graphs.release(lambda key, encoder=encoder: key[0] is encoder)
                self._addresses[encoder] = addresses
        with ExitStack() as stack:
            for encoder in self.encoders:
                stack.enter_context(wrapped_forward(encoder, self._forward_of(encoder)))
            yield

    def _forward_of(self, encoder: torch.nn.Module) -> Any:
        def forward(inner: Any, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            def eager() -> Any:
                return inner(input_ids, *args, **kwargs)

            if args or kwargs != {"output_hidden_states": True} or torch.is_grad_enabled():
                return eager()
            return self.graphs.call((encoder, tuple(input_ids.shape)), lambda ids: inner(ids, output_hidden_states=True),
                                    (input_ids,), eager, _cloned)

        return forward
