"""What the GPU benchmarks share: random pictures to feed a model, and wall time with the device
synchronised around the call (CUDA work is asynchronous; unsynchronised timings measure the launch)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image


def pictures(count: int, side: int, seed: int) -> list[Image.Image]:
    """`count` RGB pictures of random pixels, `side`² each (time and memory do not depend on content)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(count)]


def timed(run: Callable[[], object], device: torch.device) -> float:
    """Seconds `run()` takes, the device synchronised before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started
