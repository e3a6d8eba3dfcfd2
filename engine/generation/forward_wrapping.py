"""Routing a module's calls through a wrapper for a while: `wrapped_forward`.

The generator changes how the UNet is called during one request without touching the
pipeline that calls it: CUDA graphs replay the call, the guidance interval halves it. Both
set `forward` on the UNet instance, nested, so each must put back exactly what it found.
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
