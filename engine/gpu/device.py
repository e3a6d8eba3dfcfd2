"""Which torch device and precision to run on, and how much memory it has free."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

import torch


def resolve_device(setting: str = "auto") -> torch.device:
    """'auto' takes CUDA when present; 'cuda' without a GPU is an error the operator must see.

    A worker started for one GPU sees only that one (pin_to_gpu), so the GPU is always cuda:0.
    """
    if setting == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if setting == "cuda":
        raise RuntimeError("PAWTRAIT_DEVICE=cuda but no CUDA GPU is visible; set PAWTRAIT_DEVICE=auto or cpu")
    return torch.device("cpu")


GIB = 2**30
# What a 1024² picture needs beside the resident weights: the UNet's activations and the VAE decode.
PICTURE_ROOM = 4 * GIB
TIGHT_GIB = 32  # cards (or caps) this small get expandable segments: see reduce_fragmentation
# This process's GPU memory cap per device index (PAWTRAIT_GPU_MEMORY_GIB), in bytes torch may allocate.
_caps: dict[int, int] = {}


class PrecisionUnavailable(RuntimeError):
    """PAWTRAIT_DTYPE asks for a precision this GPU cannot compute in; the message says what to set."""


class GpuNotVisible(ValueError):
    """A worker was told to use a GPU this machine does not show it; the message says which exist."""


def pin_to_gpu(index: int, env: MutableMapping[str, str] = os.environ) -> str:
    """Make the `index`-th visible GPU the only one this process sees (as cuda:0); returns its id.

    torch's current device is per thread, and CUDA graph side streams, `synchronize()` and
    every tensor made without a device use it: a worker told to use cuda:1 whose training and
    generation threads still defaulted to cuda:0 would capture graphs and allocate on the
    other worker's GPU. Narrowing CUDA_VISIBLE_DEVICES before CUDA starts makes cuda:0 this
    worker's GPU in every thread. Raises GpuNotVisible (in plain words) for an index that is
    not visible, RuntimeError if CUDA already started in this process.
    """
    if torch.cuda.is_initialized():
        raise RuntimeError("pin_to_gpu must run before CUDA starts in this process")
    listed = env.get("CUDA_VISIBLE_DEVICES")
    visible = [part.strip() for part in listed.split(",") if part.strip()] if listed is not None else None
    if index < 0 or (visible is not None and index >= len(visible)):
        seen = "no GPU" if not visible else f"{len(visible)} GPU{'s' if len(visible) != 1 else ''} ({listed})"
        raise GpuNotVisible(f"there is no GPU {index} here: CUDA_VISIBLE_DEVICES shows {seen}; count from 0")
    chosen = visible[index] if visible is not None else str(index)
    env["CUDA_VISIBLE_DEVICES"] = chosen
    return chosen


def compute_dtype(device: torch.device, setting: str = "auto") -> torch.dtype:
    """bf16 where the GPU supports it (no overflow, no loss scaling), fp16 on older GPUs, fp32 on CPU.

    `setting` (PAWTRAIT_DTYPE) forces bf16 or fp16 on a GPU, e.g. to run the fp16 path of a T4
    or V100 on an H100; a CPU computes in fp32 whatever it says.
    """
    if device.type != "cuda":
        return torch.float32
    if setting == "fp16":
        return torch.float16
    if setting == "bf16":
        if not torch.cuda.is_bf16_supported():
            raise PrecisionUnavailable(
                f"PAWTRAIT_DTYPE=bf16, but {torch.cuda.get_device_name(device)} has no bf16: set PAWTRAIT_DTYPE=auto or fp16"
            )
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def reduce_fragmentation(device: torch.device, gib: float | None) -> None:
    """On a card of at most TIGHT_GIB (or under such a PAWTRAIT_GPU_MEMORY_GIB cap), let torch's
    allocator grow its memory segments in place (expandable segments) instead of caching fixed
    blocks that only fit requests of their size.

    Measured on the H200 under caps (docs/BENCHMARKS.md, card table): at 12 GiB a 1024² picture
    ran out of memory with 4.4 GiB reserved but unusable in fragments, and at 16 GiB the training
    could not capture its step with 9.2 GiB so held; with expandable segments both work. On the
    whole card they bought nothing and the fast-mode step read 0.88-1.09 s against 0.62 s
    without, so bigger cards keep torch's default. An operator's own PYTORCH_CUDA_ALLOC_CONF
    setting of it wins.
    """
    if device.type != "cuda" or "expandable_segments" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""):
        return
    size = gib if gib is not None else torch.cuda.get_device_properties(device).total_memory / GIB
    if size <= TIGHT_GIB:
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")


def limit_gpu_memory(device: torch.device, gib: float | None) -> None:
    """Make this process see a GPU of `gib` GiB (PAWTRAIT_GPU_MEMORY_GIB): one big GPU shows what
    an 8, 12, 16 or 24 GB card gets.

    A card of N GiB lends torch N GiB minus the CUDA context and libraries, which take their
    memory outside torch's allocator: what this process already uses (measured here, at start,
    before any weights) is taken off the cap, so a model that fits the emulated card fits the
    real one. Torch refuses allocations past the cap as out of memory; `free_memory_bytes`
    reports memory left under the cap, so the training and generation modes are chosen as on
    that card.
    """
    if gib is None or device.type != "cuda":
        return
    index = _index(device)
    free, total = torch.cuda.mem_get_info(index)
    outside = total - free - torch.cuda.memory_reserved(index)  # context, cuBLAS, ...: not torch's to hand out
    cap = max(int(gib * GIB) - outside, 0)
    torch.cuda.set_per_process_memory_fraction(min(cap / total, 1.0), index)
    _caps[index] = cap


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA device (what the driver says plus what torch has cached, and no more
    than the PAWTRAIT_GPU_MEMORY_GIB cap leaves), else None."""
    if device.type != "cuda":
        return None
    index = _index(device)
    free, _total = torch.cuda.mem_get_info(index)
    allocated = torch.cuda.memory_allocated(index)
    available = free + torch.cuda.memory_reserved(index) - allocated
    return capped(available, allocated, _caps.get(index))


def capped(available: int, allocated: int, cap: int | None) -> int:
    """Free bytes under an optional cap on what torch may allocate."""
    return available if cap is None else max(0, min(available, cap - allocated))


def describe(device: torch.device) -> str:
    if device.type != "cuda":
        return "CPU"
    name = torch.cuda.get_device_name(device)
    free = free_memory_bytes(device) or 0
    index = _index(device)
    cap = f" (capped by PAWTRAIT_GPU_MEMORY_GIB: {_caps[index] / GIB:.1f} GiB for torch)" if index in _caps else ""
    return f"{name}, {free / GIB:.1f} GiB free{cap}"
