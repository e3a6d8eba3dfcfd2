"""What a worker's training asks between two optimizer steps: answered from memory, never by waiting
for the event loop or the database, and a `/cancel` still stops it within a wake-up.

The real Executor runs a real training job over a real queue; only the optimizer step is replaced
by a pause (`LoraTrainer.train_step`), so the steps' timing is what the worker does between them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable

import pytest
import torch

from config.settings import Settings
from engine.gpu.models import BaseModel
from engine.gpu.training.loop import LoraTrainer
from engine.gpu.worker.executor import Executor
from storage import jobs
from storage.files import DataDir, FileStore
from storage.wakeup import open_wakeup

from worker_helpers import submit_training, tiny_training

WORKER = "host:0"


def stub_steps(monkeypatch: pytest.MonkeyPatch, seconds: float, at_step: Callable[[int], None] = lambda step: None
               ) -> list[tuple[int, float]]:
    """Replace the optimizer step by a pause of `seconds`; returns the (step, start time) of each step."""
    starts: list[tuple[int, float]] = []

    def train_step(trainer: LoraTrainer, step: int) -> torch.Tensor:
        starts.append((step, time.monotonic()))
        at_step(step)
        time.sleep(seconds)
        return torch.zeros(())

    monkeypatch.setattr(LoraTrainer, "train_step", train_step)
    return starts


async def claimed_training(db, store: FileStore, settings: Settings, steps: int) -> jobs.Job:
    await submit_training(db, store, settings, tiny_training(steps, steps), "alice", "Thor")
    return await jobs.claim_next_job(db, WORKER)


def executor(settings: Settings, db, store: FileStore, base: BaseModel, **extra) -> Executor:
    quiet = dataclasses.replace(settings, safety=False, scores=False)  # screening and scores are not what is timed
    return Executor(quiet, db, store, DataDir(settings.data_dir), base, WORKER, **extra)


async def test_a_training_steps_on_while_the_event_loop_and_its_database_are_frozen(
    db, store: FileStore, settings: Settings, base: BaseModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After step 5 the worker's event loop, and with it every query, stops for two seconds: the
    training thread, which asks about cancels and waiting pictures at every step, must go on to its
    checkpoint (after step 30), the first thing it waits for."""
    loop = asyncio.get_running_loop()
    frozen, thawed_at = threading.Event(), []

    def freeze() -> None:  # runs on the event loop: nothing else does meanwhile
        frozen.set()
        time.sleep(2.0)
        thawed_at.append(time.monotonic())

    def at_step(step: int) -> None:
        if step == 5:
            loop.call_soon_threadsafe(freeze)
            frozen.wait()

    starts = stub_steps(monkeypatch, 0.0, at_step)
    job = await claimed_training(db, store, settings, 30)
    done = await executor(settings, db, store, base).run(job)
    assert done.status == "succeeded", done.error
    assert [step for step, _ in starts] == list(range(30))
    assert [step for step, at in starts if at >= thawed_at[0]] == []  # every step began before the loop thawed


@pytest.mark.both_modes
async def test_a_cancel_stops_the_training_within_a_wake_up(
    db, store: FileStore, settings: Settings, base: BaseModel, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """A running training's cancel wakes its worker (PostgreSQL: NOTIFY; SQLite: the 50 ms poll): the
    training stops well before the heartbeat's catch-up look (2 s) would have noticed."""
    starts = stub_steps(monkeypatch, 0.01)
    job = await claimed_training(db, store, settings, 5000)
    wakeup = open_wakeup(db)
    try:
        running = asyncio.create_task(executor(settings, db, store, base, wakeup=wakeup).run(job))
        while len(starts) < 20 and not running.done():
            await asyncio.sleep(0.01)
        asked_at = time.monotonic()
        await jobs.request_cancel(db, job.id)
        done = await asyncio.wait_for(running, 60)
    finally:
        await wakeup.close()
    assert done.status == "cancelled"
    last_start = starts[-1][1]
    assert 20 <= len(starts) < 5000
    assert last_start - asked_at < 1.0, f"the training went on {last_start - asked_at:.2f} s after the cancel"
