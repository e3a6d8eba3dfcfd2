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
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch

log = logging.getLogger(__name__)


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
        # The warm-up's activations stay cached in the allocator's main pool, which the graph's
        # private pool cannot use: on a 12 GiB card a capture failed with 4.5 GiB held that way.
        torch.cuda.empty_cache()
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


class GraphsByKey:
    """Graphs of one kind of call, one per key (its input shapes): a key's first call runs
    eagerly on the side stream (the warm-up), its second is captured, later ones replay.

    The warm-up is per thread: cuBLAS makes a handle for each thread on its first matmul, which
    cannot happen during a capture. Requests run in a pool of threads, and a text encoder warmed
    up in one request and captured in the next, on another thread, failed every time
    (CUBLAS_STATUS_NOT_INITIALIZED) and ran without graphs for good.

    At most `capacity` graphs are kept (the most recently used), all in one memory pool, as
    they never run at the same time. A capture that fails turns graphs off for good: the
    calls run eagerly from then on, and the picture or step is not lost.
    """

    def __init__(self, what: str, capacity: int | None = None) -> None:
        self.what = what
        self.capacity = capacity
        self._graphs: OrderedDict[Hashable, CapturedCall] = OrderedDict()
        self._warmed: set[tuple[Hashable, int]] = set()  # (key, thread)
        self._pool: Any = None
        self.failed = False

    def release(self, which: Callable[[Hashable], bool] = lambda key: True) -> None:
        """Drop the graphs (all, or those whose key matches) and with the last one their memory."""
        for key in [key for key in self._graphs if which(key)]:
            del self._graphs[key]
        self._warmed = {(key, thread) for key, thread in self._warmed if not which(key)}
        if not self._graphs:
            self._pool = None

    def call(self, key: Hashable, fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...],
             eager: Callable[[], Any], finish: Callable[[Any], Any]) -> Any:
        """`eager()` while warming up (or without graphs), else `finish(output)` of `fn(*inputs)` replayed."""
        if self.failed:
            return eager()
        graph = self._graphs.get(key)
        if graph is None:
            if (key, threading.get_ident()) not in self._warmed:
                self._warmed.add((key, threading.get_ident()))
                return on_side_stream(eager)
            graph = self._capture(key, fn, inputs)
            if graph is None:
                return eager()
        self._graphs.move_to_end(key)
        return finish(graph(*inputs))

    def _capture(self, key: Hashable, fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...]) -> CapturedCall | None:
        while self.capacity is not None and len(self._graphs) >= self.capacity:
            self._graphs.popitem(last=False)
        try:
            graph = CapturedCall(fn, inputs, pool=self._pool)
        except Exception:
            log.exception("capturing %s as a CUDA graph failed; running it without CUDA graphs", self.what)
            self.failed = True
            self.release()
            return None
        self._pool = graph.pool()
        self._graphs[key] = graph
        log.info("%s captured as a CUDA graph for inputs %s", self.what, [tuple(tensor.shape) for tensor in inputs])
        return graph
