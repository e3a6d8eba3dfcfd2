"""Regional torch.compile of SDXL's UNet: each transformer and ResNet block on its own.

The blocks repeat, so compiling them one by one costs under two minutes where a full-graph
compile takes many on a slow CPU. Parameters stay inputs of the compiled code, so weights
changed in place (a pet merged in, an optimizer step) need no recompilation. Training and
generation share the compiled blocks of the one resident UNet.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D

_compiled: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def compile_blocks(unet: torch.nn.Module) -> int:
    """Compile a model's transformer and ResNet blocks (SDXL's UNet has 87; the VAE decoder's
    ResNet blocks are the same class), once per model; returns how many there are."""
    # Blocks of one class share their forward code but differ in width and resolution, and dynamo
    # keeps one graph per variant (x grad mode x batch): SDXL needs more than the default 8.
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    blocks = [module for module in unet.modules() if isinstance(module, (BasicTransformerBlock, ResnetBlock2D))]
    if unet not in _compiled:
        for module in blocks:
            module.compile()
        _compiled.add(unet)
    return len(blocks)


def keep_compiled_code_in(folder: Path) -> None:
    """Keep inductor's on-disk cache of compiled code in `folder` (unless TORCHINDUCTOR_CACHE_DIR
    says otherwise) instead of under /tmp, so it outlives reboots: on the H100 a worker's first
    compiled picture took 176 s with an empty cache and 33 s with a filled one (docs/BENCHMARKS.md)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
