"""Driving real worker processes from tests: start and stop them, wait for jobs, submit work."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from config.settings import Settings
from engine.usecases.training import TrainingParams, create_run
from storage import jobs
from storage.files import FileStore
from storage.pets import LOCAL_GUILD

from training_helpers import pet_with_photos

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 150.0


def own_folder(env: dict[str, str], mode: str, folder: Path) -> dict[str, str]:
    """Distributed: a worker host's own local folder (only a cache); embedded: the shared data folder."""
    return {**env, "PAWTRAIT_DATA_DIR": str(folder)} if mode == "distributed" else env


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "engine.gpu.worker"], cwd=REPO, env=env, stdout=out, stderr=out)


def stop_worker(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def eventually(check: Callable[[], Awaitable[object]], what: str, log: Path | None = None) -> object:
    """Poll `check` until it returns something truthy (the worker runs in another process)."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


async def ended(db, job_id: int) -> jobs.Job | None:
    job = await jobs.get_job(db, job_id)
    return job if job is not None and job.ended else None


def tiny_training(steps: int, checkpoint_every: int, validate_every: int = 0) -> TrainingParams:
    return TrainingParams(
        steps=steps, checkpoint_every=checkpoint_every, validate_every=validate_every,
        resolution=64, gradient_accumulation=1,
    )


async def submit_training(db, store: FileStore, settings: Settings, params: TrainingParams, user: str, name: str):
    pet = await pet_with_photos(db, store, name=name)
    run_id = await create_run(db, store, pet, params)
    job = await jobs.submit_job(db, settings, "train", LOCAL_GUILD, user, {"run_id": run_id, "pet_id": pet.id}, run_id)
    return pet, run_id, job


def painting(**extra) -> dict:
    # One denoising step: the tiny model paints noise either way, and 1024 px steps are slow on a CPU.
    return {"request": {"prompt": "a photo of a cat", "steps": 1, "seed": 7, **extra}}


async def started_events(db, job_id: int) -> list[jobs.JobEvent]:
    return [event for event in await jobs.events_after(db, jobs.START, [job_id]) if event.kind == "started"]
