"""The one way from an engine thread (a training, a picture) to the worker's event loop.

Torch work runs in threads so the loop keeps serving, but rows, files and the callers' hooks
belong to the loop (its database connections, its tasks). `hop` schedules a call there and
returns at once; `.result()` on its answer waits for it, which the training thread does only
where it needs the answer (a checkpoint's id, a generation served between steps).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


def hop(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """fn(*args, **kwargs) on `loop`, awaited there if it returns an awaitable; only from another
    thread: waiting for the answer on the loop's own thread would wait forever."""
    if running_on(loop):
        raise RuntimeError("hop from the event loop's own thread: call or await fn there instead")
    return asyncio.run_coroutine_threadsafe(called(fn, *args, **kwargs), loop)


async def called(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs), awaited if it is a coroutine (the callers' hooks may be either)."""
    result = fn(*args, **kwargs)
    return await result if inspect.isawaitable(result) else result


def running_on(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this thread is the one running `loop`."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
