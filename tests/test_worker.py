"""The GPU worker with real worker processes on the tiny model: interleaving, cancel, crashes, sharing.

Each test starts `python -m engine.worker` processes (or the supervisor the bot uses) on a
fresh data folder and drives them only through the job queue, as the bot and CLI do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from engine.settings import Settings
from engine.training import TrainingParams, create_run
from engine.worker.supervisor import WorkerSupervisor
from storage import jobs, runs
from storage.files import DataDir
from storage.pets import LOCAL_GUILD
from training_helpers import pet_with_photos

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 150.0


@pytest.fixture
def worker_env(env: dict[str, str]) -> dict[str, str]:
    """One OpenMP thread per worker: on a small shared CPU, spinning OpenMP threads of several
    processes slow each other down tenfold."""
    return {**env, "OMP_NUM_THREADS": "1"}


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "engine.worker"], cwd=REPO, env=env, stdout=out, stderr=out)


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


def tiny_training(steps: int, checkpoint_every: int) -> TrainingParams:
    return TrainingParams(
        steps=steps, checkpoint_every=checkpoint_every, validate_every=0, validation_steps=1, resolution=64,
        gradient_accumulation=1,
    )


async def submit_training(db, settings: Settings, params: TrainingParams, user: str, name: str):
    data = DataDir(settings.data_dir)
    pet = await pet_with_photos(db, data, name=name)
    run_id = await create_run(db, data, pet, params)
    job = await jobs.submit_job(db, settings, "train", LOCAL_GUILD, user, {"run_id": run_id, "pet_id": pet.id}, run_id)
    return pet, run_id, job


def painting(**extra) -> dict:
    # One denoising step: the tiny model paints noise either way, and 1024 px steps are slow on a CPU.
    return {"request": {"prompt": "a photo of a cat", "steps": 1, "seed": 7, **extra}}


async def started_events(db, job_id: int) -> list[jobs.JobEvent]:
    return [event for event in await jobs.events_after(db, 0, [job_id]) if event.kind == "started"]


async def test_generation_is_served_between_training_steps_and_cancel_and_failures_stay_local(
    db, settings: Settings, worker_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    pet, run_id, training = await submit_training(db, settings, tiny_training(5000, 25), "alice", "Thor")
    _, other_run, waiting = await submit_training(db, settings, tiny_training(5, 5), "bob", "Loki")
    worker = start_worker(worker_env, log)
    try:
        async def training_checkpointed():
            return any(e.kind == "checkpoint" for e in await jobs.events_after(db, 0, [training.id]))

        await eventually(training_checkpointed, "the training's first checkpoint", log)

        # A queued job disappears from the queue at once; its run never starts.
        cancelled = await jobs.request_cancel(db, waiting.id)
        assert cancelled.status == "cancelled" and await jobs.queue_position(db, waiting.id) is None
        assert (await runs.get_run(db, other_run)).status == "cancelled"

        # A generation submitted mid-training is served between two steps, long before the training ends.
        generation = await jobs.submit_job(db, settings, "generate", LOCAL_GUILD, "carol", painting())
        done = await eventually(lambda: ended(db, generation.id), "the generation", log)
        assert done.status == "succeeded", done.error
        assert len(done.result["files"]) == 1 and DataDir(settings.data_dir).abs(done.result["files"][0]).is_file()
        assert (await jobs.get_job(db, training.id)).status == "running"

        # A corrupt LoRA file fails that generation only; the next one and the training carry on.
        checkpoint = (await runs.list_checkpoints(db, run_id))[0]
        broken = DataDir(settings.data_dir).abs(checkpoint.path) / "broken.safetensors"
        broken.write_bytes(b"this is not a LoRA")
        broken_id = await runs.add_checkpoint(
            db, run_id, checkpoint.step + 1, checkpoint.path, str(Path(checkpoint.path) / broken.name), checkpoint.kohya_file
        )
        bad = await jobs.submit_job(
            db, settings, "generate", LOCAL_GUILD, "carol", painting(pet_id=pet.id, checkpoint_id=broken_id, prompt="a photo of TOK cat")
        )
        good = await jobs.submit_job(db, settings, "generate", LOCAL_GUILD, "carol", painting(seed=8))
        bad_done = await eventually(lambda: ended(db, bad.id), "the generation with a corrupt LoRA", log)
        good_done = await eventually(lambda: ended(db, good.id), "the generation after the failure", log)
        assert bad_done.status == "failed" and bad_done.error
        assert "Traceback" not in bad_done.error
        assert good_done.status == "succeeded", good_done.error
        assert (await jobs.get_job(db, training.id)).status == "running"

        # A running training stops at its next step and keeps its checkpoints.
        await jobs.request_cancel(db, training.id)
        stopped = await eventually(lambda: ended(db, training.id), "the cancelled training", log)
        assert stopped.status == "cancelled"
        run = await runs.get_run(db, run_id)
        assert run.status == "cancelled" and 0 < run.step < 5000
        kept = await runs.list_checkpoints(db, run_id)
        assert kept and all(DataDir(settings.data_dir).abs(c.diffusers_file).is_file() for c in kept if c.id != broken_id)
        assert stopped.finished_at > good_done.finished_at > done.finished_at
        assert await started_events(db, waiting.id) == []
        assert worker.poll() is None  # the failures never took the worker down
    finally:
        stop_worker(worker)


async def test_killed_worker_is_restarted_and_the_training_resumes_from_its_checkpoint(
    db, settings: Settings, worker_env: dict[str, str]
) -> None:
    _, run_id, training = await submit_training(db, settings, tiny_training(120, 20), "alice", "Thor")
    supervisor = WorkerSupervisor(dataclasses.replace(settings, workers="auto"), worker_env)
    [first_pid] = await supervisor.start()
    try:
        async def checkpointed():
            return await runs.list_checkpoints(db, run_id)

        await eventually(checkpointed, "the first checkpoint")
        os.kill(first_pid, signal.SIGKILL)
        resumed_from = (await runs.list_checkpoints(db, run_id))[-1].step  # the latest one the dead worker wrote
        last_seen = max(e.id for e in await jobs.events_after(db, 0, [training.id]))

        finished = await eventually(lambda: ended(db, training.id), "the resumed training")
        assert supervisor.restarts == 1 and supervisor.pids != [first_pid]
        assert finished.status == "succeeded", finished.error
        assert finished.attempts == 2 and finished.result["step"] == 120

        after = await jobs.events_after(db, last_seen, [training.id])
        assert [e.kind for e in after][:2] == ["queued", "started"]  # requeued by the new worker's recovery
        # The 'before training' images nobody posted (no front end here) are announced again.
        assert [e.data["step"] for e in after if e.kind == "validation"][:1] == [0]
        steps = [e.data["step"] for e in after if e.kind == "progress"]
        assert steps and min(steps) > resumed_from  # went on from the checkpoint, not from step 0
        assert (await runs.get_run(db, run_id)).status == "succeeded"
    finally:
        await supervisor.stop()
    assert supervisor.pids == []


async def test_two_workers_share_the_queue_and_run_each_job_once(
    db, settings: Settings, worker_env: dict[str, str], tmp_path: Path
) -> None:
    settings = dataclasses.replace(settings, max_queued_generations_per_user=10)
    submitted = [
        await jobs.submit_job(db, settings, "generate", LOCAL_GUILD, "carol", painting(seed=seed)) for seed in range(4)
    ]
    workers = [start_worker(worker_env, tmp_path / f"worker-{index}.log") for index in range(2)]
    try:
        for job in submitted:
            done = await eventually(lambda: ended(db, job.id), f"job {job.id}", tmp_path / "worker-0.log")
            assert done.status == "succeeded", done.error
        for job in submitted:
            assert len(await started_events(db, job.id)) == 1
        generation_ids = {(await jobs.get_job(db, job.id)).generation_id for job in submitted}
        assert len(generation_ids) == len(submitted)
    finally:
        for worker in workers:
            stop_worker(worker)
