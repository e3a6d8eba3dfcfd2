"""A training's checkpoints and validation pictures stored and recorded off the training thread.

Writing a checkpoint (three files, fsynced), encoding three 1024² PNGs, putting them in the
file store and recording their rows took 0.4-0.5 s per validation round and 0.4 s per
checkpoint on the H200's host (docs/BENCHMARKS.md, run T4), during which the GPU idled; with
S3 as the file store an upload takes longer still. Here one thread does that work in the order
it was handed in (a round's rows name the checkpoint recorded before them), while the training
thread goes on with the next steps.

Nothing is lost on a failure: leaving the `with` block waits for everything handed in. A
failed piece of work stops the training at its next hand-in (or at the end), with its own
error; when the training itself failed, that error is the one reported and the other is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

import torch

log = logging.getLogger(__name__)


class Publisher:
    """Runs the work handed to it one piece at a time, in order, on its own thread."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish")
        self._pending: list[Future] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue fn(*args); raises the error of earlier work that failed, so the training stops there."""
        self._raise_failures(wait=False)
        self._pending.append(self._pool.submit(fn, *args))

    def _raise_failures(self, wait: bool) -> None:
        finished = [future for future in self._pending if wait or future.done()]
        self._pending = [future for future in self._pending if future not in finished]
        for future in finished:
            future.result()  # the first failure raises (leaving the block still waits for the rest)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        try:
            if error is None:
                self._raise_failures(wait=True)
                return
            for future in self._pending:  # wait for all: the training's own error is the one to report
                if future.exception() is not None:
                    log.error("storing a checkpoint or validation pictures failed too", exc_info=future.exception())
        finally:
            self._pool.shutdown(wait=True)


def snapshot(state: Any) -> Any:
    """A copy on the CPU of every tensor in `state` (nested dicts, lists, tuples): the steps after
    a checkpoint change the optimizer's state tensors in place while the checkpoint is written."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {key: snapshot(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(snapshot(value) for value in state)
    return state
