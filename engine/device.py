"""Which torch device and precision to run on, and how much memory it has free."""

from __future__ import annotations

import torch


def resolve_device(setting: str = "auto", gpu_index: int | None = None) -> torch.device:
    """'auto' takes CUDA when present; 'cuda' without a GPU is an error the operator must see."""
    if setting == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", gpu_index or 0)
    if setting == "cuda":
        raise RuntimeError("PAWTRAIT_DEVICE=cuda but no CUDA GPU is visible; set PAWTRAIT_DEVICE=auto or cpu")
    return torch.device("cpu")


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU supports it (no overflow, no loss scaling), fp16 on older GPUs, fp32 on CPU."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA device (what the driver says plus what torch has cached), else None."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def describe(device: torch.device) -> str:
    if device.type != "cuda":
        return "CPU"
    name = torch.cuda.get_device_name(device)
    free = free_memory_bytes(device) or 0
    return f"{name}, {free / 2**30:.1f} GiB free"
