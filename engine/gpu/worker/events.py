"""Getting engine callbacks (called in the engines' worker threads) into job rows and events.

Training and generation call their hooks from the thread that runs the torch work, while
the database connection belongs to the worker's event loop. `LoopBridge` hands each write
to the loop (engine.gpu.loop_hop) without making the GPU thread wait for the database; `flush()` waits for them before
the job's final event, so subscribers see events in order.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine
from typing import Any

from engine.gpu.loop_hop import hop, running_on

log = logging.getLogger(__name__)

# Subscribers poll about once a second, and Discord rate-limits message edits; more
# frequent progress or preview events would only cost database writes and PNG encodes.
PROGRESS_INTERVAL_S = 1.0
PREVIEW_INTERVAL_S = 1.0


class LoopBridge:
    """Runs coroutines on the worker's event loop from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pending: list[asyncio.Future[Any]] = []
        self._lock = threading.Lock()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Schedule `coro` without waiting for it (from the loop's thread or any other)."""
        if running_on(self.loop):
            future: asyncio.Future[Any] = self.loop.create_task(coro)
        else:
            future = asyncio.wrap_future(hop(self.loop, lambda: coro), loop=self.loop)
        with self._lock:
            self._pending.append(future)

    async def flush(self) -> None:
        """Wait for everything submitted so far; a failed event write is logged, not raised."""
        with self._lock:
            pending, self._pending = self._pending, []
        for result in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(result, BaseException):
                log.error("recording a job event failed: %s", result)


class Throttle:
    """True at most once per `interval_s` (always for the first call and when forced)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last = float("-inf")

    def ready(self, force: bool = False) -> bool:
        now = time.monotonic()
        if force or now - self._last >= self.interval_s:
            self._last = now
            return True
        return False


