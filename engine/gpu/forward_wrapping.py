"""Routing a module's calls through a wrapper for a while: `wrapped_forward`.

The engine changes how a module is called without touching the code that calls it: during a
request CUDA graphs replay the UNet's call and the guidance interval halves it, and compiled
blocks run their compiled code (engine/gpu/compile.py). Each sets `forward` on the instance,
possibly nested, so each must put back exactly what it found.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def wrapped_forward(module: torch.nn.Module, wrapper: Callable[..., Any]) -> Iterator[None]:
    """Inside, `module(*args, **kwargs)` runs `wrapper(inner, *args, **kwargs)`, where `inner` is
    the forward in place on entry (the class's, or an outer wrapper's); on exit that one is back."""
    had_own = "forward" in module.__dict__
    previous = module.__dict__.get("forward")
    module.forward = functools.partial(wrapper, module.forward)
    try:
        yield
    finally:
        if had_own:
            module.forward = previous
        else:
            del module.forward  # the instance attribute: back to the class's forward
