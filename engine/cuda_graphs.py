"""CUDA graphs: record a function's kernels once, then replay them without the Python that launched them.

SDXL's UNet launches thousands of small kernels per call, and on the H100 the host spends
longer launching them than the GPU spends running them (docs/BENCHMARKS.md). A captured
graph replays the whole call as one launch. The price: the call must see the same shapes,
the same parameter tensors (their values may change in place: merged pet LoRAs, optimizer
updates) and no host syncs; its inputs are copied into fixed buffers and its output lives
in graph-owned memory that the next replay overwrites.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch


@functools.cache
def _side_stream(device: int) -> torch.cuda.Stream:
    """One side stream per GPU for warm-ups and captures alike: every new stream gets its own
    cuBLAS workspace, which stays allocated (a fresh stream per call cost lean mode ~0.2 GiB)."""
    return torch.cuda.Stream(device)


def on_side_stream(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn` eagerly on the side stream, as warm-up calls before a capture must be (PyTorch's CUDA graph rules)."""
    stream = _side_stream(torch.cuda.current_device())
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        result = fn(*args)
    torch.cuda.current_stream().wait_stream(stream)
    return result


class CapturedCall:
    """`fn(*inputs)` captured as one CUDA graph over private copies of `inputs`.

    Calling it copies new values (same shapes and dtypes) into those copies, replays the graph
    and returns the output tensor(s) `fn` returned at capture, now holding this call's result.
    `pool` lets graphs that never run at the same time share their memory.
    """

    def __init__(self, fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...], pool: Any = None) -> None:
        self.inputs = tuple(tensor.detach().clone() for tensor in inputs)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, stream=_side_stream(torch.cuda.current_device())):
            self.output = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor) -> Any:
        for buffer, value in zip(self.inputs, inputs, strict=True):
            buffer.copy_(value)
        self.graph.replay()
        return self.output

    def pool(self) -> Any:
        return self.graph.pool()


def graphs_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available()
