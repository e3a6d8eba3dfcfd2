"""The device rules that hold without a GPU: precision on a CPU, free memory under a cap."""

from __future__ import annotations

import torch

from engine.device import GIB, capped, compute_dtype


def test_a_cpu_computes_in_fp32_whatever_precision_is_asked_for() -> None:
    for setting in ("auto", "bf16", "fp16"):
        assert compute_dtype(torch.device("cpu"), setting) == torch.float32


def test_free_memory_is_what_the_cap_leaves() -> None:
    assert capped(70 * GIB, 10 * GIB, None) == 70 * GIB  # no cap: what the card has
    assert capped(70 * GIB, 10 * GIB, 12 * GIB) == 2 * GIB  # a 12 GiB card with 10 GiB in use
    assert capped(1 * GIB, 2 * GIB, 12 * GIB) == 1 * GIB  # the card itself has less
    assert capped(70 * GIB, 13 * GIB, 12 * GIB) == 0
