"""The device rules that hold without a GPU: precision on a CPU, free memory under a cap, a worker's GPU."""

from __future__ import annotations

import re

import pytest
import torch

from engine.gpu.device import GIB, GpuNotVisible, capped, compute_dtype, pin_to_gpu


def test_a_cpu_computes_in_fp32_whatever_precision_is_asked_for() -> None:
    for setting in ("auto", "bf16", "fp16"):
        assert compute_dtype(torch.device("cpu"), setting) == torch.float32


def test_free_memory_is_what_the_cap_leaves() -> None:
    assert capped(70 * GIB, 10 * GIB, None) == 70 * GIB  # no cap: what the card has
    assert capped(70 * GIB, 10 * GIB, 12 * GIB) == 2 * GIB  # a 12 GiB card with 10 GiB in use
    assert capped(1 * GIB, 2 * GIB, 12 * GIB) == 1 * GIB  # the card itself has less
    assert capped(70 * GIB, 13 * GIB, 12 * GIB) == 0


def test_a_worker_pinned_to_a_gpu_sees_only_that_one() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "4,7"}
    assert pin_to_gpu(1, env) == "7" and env == {"CUDA_VISIBLE_DEVICES": "7"}  # the second of those visible
    env = {}
    assert pin_to_gpu(1, env) == "1" and env == {"CUDA_VISIBLE_DEVICES": "1"}
    for visible, index, words in (("4,7", 2, "shows 2 GPUs (4,7)"), ("", 0, "shows no GPU"), ("4", -1, "1 GPU (4)")):
        with pytest.raises(GpuNotVisible, match=re.escape(words)):
            pin_to_gpu(index, {"CUDA_VISIBLE_DEVICES": visible})
