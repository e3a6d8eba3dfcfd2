"""Regional torch.compile of SDXL's UNet and VAE decoder: each transformer and ResNet block on its own.

The blocks repeat, so compiling them one by one costs minutes where a full-graph compile of
the UNet takes many more. Parameters stay inputs of the compiled code, so weights changed in
place (a pet merged in, an optimizer step) need no recompilation.

The compiled code runs only inside `CompiledBlocks.active()`; outside, the very same blocks
run eagerly. A training step turns it on for itself (compiling on first use, as a training can
wait), while generation turns it on only for request shapes compiled beforehand, off the
request path (engine/gpu/generation/compile_ahead.py): a request never waits for the compiler.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D

from engine.gpu.forward_wrapping import wrapped_forward

BLOCK_TYPES = (BasicTransformerBlock, ResnetBlock2D)
# Each block variant (width, resolution, batch, grad mode) is its own static graph, and blocks of
# one class share one code object, so SDXL at all size presets and counts needs many entries;
# dynamo's defaults (8 per code object, 256 in all) would send the rest back to eager.
RECOMPILE_LIMIT = 1024
ACCUMULATED_RECOMPILE_LIMIT = 4096


@dataclass
class BlockCall:
    """One recorded call of a block: its inputs, copied, to replay through the compiled code."""

    block: torch.nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class CompiledBlocks:
    """A model's transformer and ResNet blocks, each with compiled code used only inside `active()`.

    Shapes are static (`dynamic=False`): every block variant at every request shape gets its own
    graph, so a shape compiled ahead is exactly the shape a request runs, and the compiled
    kernels are specialised for it.
    """

    def __init__(self, model: torch.nn.Module, backend: str | Callable[..., Any] = "inductor") -> None:
        import torch._dynamo

        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, ACCUMULATED_RECOMPILE_LIMIT)
        self.blocks = [module for module in model.modules() if isinstance(module, BLOCK_TYPES)]
        # The class's forward, bound: blocks of one class share its code object and so their graphs.
        self._compiled = [torch.compile(block.forward, backend=backend, dynamic=False) for block in self.blocks]
        self._active = False

    @contextmanager
    def active(self) -> Iterator[None]:
        """Inside (nestable), every call of a block runs its compiled code, compiling a new shape first."""
        if self._active:
            yield
            return
        self._active = True
        try:
            with ExitStack() as stack:
                for block, compiled in zip(self.blocks, self._compiled):
                    stack.enter_context(wrapped_forward(block, functools.partial(_run_compiled, compiled)))
                yield
        finally:
            self._active = False

    def record(self, run: Callable[[], object]) -> list[BlockCall]:
        """Run `run()` eagerly and return one call per distinct block variant it made (block class,
        structure, input shapes), with row-major copies of the inputs, e.g. to compile them one at a time."""
        calls: dict[tuple[Any, ...], BlockCall] = {}

        def keep(block: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            key = (_structure(block), _signature(args), _signature(kwargs))
            if key not in calls:
                calls[key] = BlockCall(block, _standard_layouts(args, copy=True), _standard_layouts(kwargs, copy=True))

        hooks = [block.register_forward_pre_hook(keep, with_kwargs=True) for block in self.blocks]
        try:
            run()
        finally:
            for hook in hooks:
                hook.remove()
        return list(calls.values())

    def compile_call(self, call: BlockCall, backward: bool = False) -> None:
        """Run one recorded call through the compiled code: compiles its variant unless already there.

        With `backward`, a gradient flows back through it too, as in a training step: the compiled
        backward is made at a variant's first backward.
        """
        with self.active():
            out = call.block(*call.args, **call.kwargs)
        out = out[0] if isinstance(out, tuple) else out
        if backward and out.requires_grad:  # blocks before the first LoRA layer have nothing to train
            out.backward(torch.ones_like(out))


_shared: weakref.WeakKeyDictionary[torch.nn.Module, CompiledBlocks] = weakref.WeakKeyDictionary()


def compiled_blocks(model: torch.nn.Module, backend: str | Callable[..., Any] = "inductor") -> CompiledBlocks:
    """The model's `CompiledBlocks`, one per model, shared by training and generation."""
    if model not in _shared:
        _shared[model] = CompiledBlocks(model, backend)
    return _shared[model]


def _structure(block: torch.nn.Module) -> tuple[Any, ...]:
    """What the compiled code depends on besides the inputs: the block's and its layers' classes,
    weight shapes and plain attributes (dynamo guards on those: SDXL's mid-block ResNets differ
    from the others only by an `output_scale_factor` of int 1 instead of float 1.0)."""
    return tuple(
        (
            type(module),
            tuple((name, tuple(p.shape), p.dtype) for name, p in module.named_parameters(recurse=False)),
            tuple(sorted((name, type(value), value) for name, value in vars(module).items() if isinstance(value, _PLAIN))),
        )
        for module in block.modules()
    )


_PLAIN = (int, float, str, bool, type(None))


def _signature(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device, value.requires_grad)
    if isinstance(value, (tuple, list)):
        return tuple(_signature(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((key, _signature(item)) for key, item in value.items()))
    return value if isinstance(value, _PLAIN) else type(value)


def _standard_layouts(value: Any, copy: bool = False) -> Any:
    """`value` with every tensor in row-major layout, strides of size-1 dimensions included (copied
    only where needed, or always with `copy`: a copy detached from the recorded run's autograd
    graph, needing gradients as the original did)."""
    if isinstance(value, torch.Tensor):
        if copy:
            return value.detach().clone(memory_format=torch.contiguous_format).requires_grad_(value.requires_grad)
        if value.stride() != _row_major_strides(value.shape):
            return value.clone(memory_format=torch.contiguous_format)
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_standard_layouts(item, copy) for item in value)
    if isinstance(value, dict):
        return {key: _standard_layouts(item, copy) for key, item in value.items()}
    return value


def _row_major_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _run_compiled(compiled: Callable[..., Any], _eager: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run compiled block code, instead of the eager forward, on row-major inputs. Dynamo specialises
    on input strides, and the layouts blocks receive depend on whether their neighbours ran compiled
    (e.g. the VAE's attention hands on channels-last tensors, with any stride on a batch of 1): one
    layout, one graph."""
    return compiled(*_standard_layouts(args), **_standard_layouts(kwargs))


def keep_compiled_code_in(folder: Path) -> None:
    """Keep inductor's on-disk cache of compiled code in `folder` (unless TORCHINDUCTOR_CACHE_DIR
    says otherwise) instead of under /tmp, so it outlives reboots: on the H100 a worker's first
    compiled picture took 176 s with an empty cache and 33 s with a filled one (docs/BENCHMARKS.md)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))


def compiled_code_folder() -> Path | None:
    """Where inductor keeps compiled code for this process, if `keep_compiled_code_in` (or the
    environment) chose a folder: where the record of compiled trainings belongs too."""
    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return Path(folder) if folder else None
