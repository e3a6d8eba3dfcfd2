"""The training's publisher: work done in order, failures surfaced, nothing dropped at the end."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from engine.training.publisher import Publisher, snapshot


def test_work_runs_in_order_off_the_caller_and_is_all_done_at_the_end() -> None:
    done: list[tuple[int, str]] = []
    with Publisher() as publisher:
        for index in range(5):
            publisher.submit(lambda i: (time.sleep(0.01), done.append((i, threading.current_thread().name))), index)
    assert [index for index, _ in done] == [0, 1, 2, 3, 4]
    assert all(name != threading.current_thread().name for _, name in done)


def test_a_failure_stops_the_next_hand_in_and_the_end() -> None:
    def fail() -> None:
        raise OSError("bucket unreachable")

    with pytest.raises(OSError, match="bucket unreachable"):
        with Publisher() as publisher:
            publisher.submit(fail)
            time.sleep(0.2)
            publisher.submit(lambda: None)  # raises the earlier failure: the training stops here
    with pytest.raises(OSError, match="bucket unreachable"), Publisher() as publisher:
        publisher.submit(fail)  # raised when the block ends


def test_the_training_error_wins_and_earlier_work_still_finishes() -> None:
    done: list[int] = []
    with pytest.raises(MemoryError), Publisher() as publisher:
        publisher.submit(lambda: (time.sleep(0.1), done.append(1)))
        raise MemoryError("out of GPU memory")
    assert done == [1]


def test_snapshot_is_not_changed_by_later_steps() -> None:
    moment = torch.zeros(3)
    state = {"step": 5, "optimizer": {"state": {0: {"exp_avg": moment}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}}
    copy = snapshot(state)
    moment += 1  # the next optimizer step, in place
    assert torch.equal(copy["optimizer"]["state"][0]["exp_avg"], torch.zeros(3))
    assert copy["optimizer"]["param_groups"] == [{"lr": 1e-4, "params": [0]}] and copy["step"] == 5
