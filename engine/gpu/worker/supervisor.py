"""Starting, watching and stopping the worker processes (what the bot calls).

`settings.workers`: 'auto' = one worker per visible CUDA device (one on a machine without
CUDA), N = exactly N (GPU i % devices), 0 = none (the operator runs `pawtrait worker`
separately). A worker that exits unexpectedly is started again after a back-off, so a CUDA
crash costs one job attempt, not the service. The GPU count is asked of a short child
process, so the bot's own process never imports torch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from config.settings import BOT_ONLY_VARIABLES, Settings

log = logging.getLogger(__name__)

# Back-off between restarts of a worker that keeps crashing: 1 s, 2 s, 4 s ... at most a minute.
MAX_BACKOFF_S = 60.0
# A worker that ran this long before exiting is considered healthy again (back-off resets).
HEALTHY_AFTER_S = 120.0
STOP_GRACE_S = 15.0

_COUNT_GPUS = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"


async def visible_gpus(env: Mapping[str, str] | None = None) -> int:
    """How many CUDA devices a worker process would see."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _COUNT_GPUS, env=dict(env or os.environ),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await process.communicate()
    try:
        return int(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0


async def plan_workers(settings: Settings, env: Mapping[str, str] | None = None) -> list[int | None]:
    """The --gpu index of each worker to start (None = CPU / default device)."""
    if settings.workers == "0":
        return []
    gpus = 0 if settings.device == "cpu" else await visible_gpus(env)
    count = (gpus or 1) if settings.workers == "auto" else int(settings.workers)
    return [index % gpus if gpus else None for index in range(count)]


@dataclass
class _Slot:
    gpu: int | None
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    failures: int = 0
    restarts: int = 0
    watcher: asyncio.Task | None = field(default=None, repr=False)


class WorkerSupervisor:
    """Keeps the planned worker processes running until `stop()`."""

    def __init__(self, settings: Settings, env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        # Workers run models and members' files, never Discord: they get no token to leak.
        given = env if env is not None else os.environ
        self.env = {name: value for name, value in given.items() if name not in BOT_ONLY_VARIABLES}
        self._slots: list[_Slot] = []
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        return [slot.process.pid for slot in self._slots if slot.process and slot.process.returncode is None]

    @property
    def restarts(self) -> int:
        return sum(slot.restarts for slot in self._slots)

    async def start(self) -> list[int]:
        """Start the workers; returns their pids (empty when settings.workers is 0)."""
        for gpu in await plan_workers(self.settings, self.env):
            slot = _Slot(gpu)
            self._slots.append(slot)
            await self._spawn(slot)
            slot.watcher = asyncio.create_task(self._watch(slot))
        log.info("started %d worker(s): %s", len(self._slots), self.pids)
        return self.pids

    async def _spawn(self, slot: _Slot) -> None:
        args = [sys.executable, "-m", "engine.gpu.worker"] + ([] if slot.gpu is None else ["--gpu", str(slot.gpu)])
        slot.process = await asyncio.create_subprocess_exec(*args, env=self.env)
        slot.started_at = time.monotonic()

    async def _watch(self, slot: _Slot) -> None:
        while not self._stopping:
            assert slot.process is not None
            code = await slot.process.wait()
            if self._stopping:
                return
            slot.failures = 1 if time.monotonic() - slot.started_at > HEALTHY_AFTER_S else slot.failures + 1
            delay = min(MAX_BACKOFF_S, 2.0 ** (slot.failures - 1))
            log.warning("worker pid %s exited with %s; starting another in %.0f s", slot.process.pid, code, delay)
            await asyncio.sleep(delay)
            if self._stopping:
                return
            await self._spawn(slot)
            slot.restarts += 1

    async def stop(self) -> None:
        """SIGTERM every worker (each hands its running job back to the queue), then SIGKILL stragglers."""
        self._stopping = True
        for slot in self._slots:
            if slot.watcher is not None:
                slot.watcher.cancel()
            if slot.process is not None and slot.process.returncode is None:
                slot.process.send_signal(signal.SIGTERM)
        for slot in self._slots:
            if slot.process is None:
                continue
            try:
                await asyncio.wait_for(slot.process.wait(), STOP_GRACE_S)
            except TimeoutError:
                log.warning("worker pid %s did not stop in %.0f s; killing it", slot.process.pid, STOP_GRACE_S)
                slot.process.kill()
                await slot.process.wait()
        self._slots.clear()
