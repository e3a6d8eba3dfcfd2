"""The GPU worker with real worker processes on the tiny model: interleaving, cancel, crashes, sharing.

Each test starts `python -m engine.gpu.worker` processes (or the supervisor the bot uses) on a
fresh installation and drives them only through the job queue, as the bot and CLI do.
Interleaving, cancel and failures run in both modes (SQLite + data folder, PostgreSQL + S3 with
a local folder of its own per worker); crashes and sharing run embedded here, and distributed
in test_many_hosts.py (a killed host's training finished elsewhere, several hosts on one queue).
"""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from config.settings import Settings
from engine.gpu.worker.supervisor import WorkerSupervisor
from storage import jobs, runs
from storage.files import FileStore
from storage.pet_deletion import forget_pet
from storage.pets import LOCAL_GUILD

from worker_helpers import (
    ended,
    eventually,
    own_folder,
    painting,
    start_worker,
    started_events,
    stop_worker,
    submit_training,
    tiny_training,
)


@pytest.fixture
def worker_env(env: dict[str, str]) -> dict[str, str]:
    """One OpenMP thread per worker: on a small shared CPU, spinning OpenMP threads of several
    processes slow each other down tenfold."""
    return {**env, "OMP_NUM_THREADS": "1"}


@pytest.mark.both_modes
async def test_generation_is_served_between_training_steps_and_cancel_and_failures_stay_local(
    db, store: FileStore, settings: Settings, worker_env: dict[str, str], tmp_path: Path, mode: str
) -> None:
    log = tmp_path / "worker.log"
    pet, run_id, training = await submit_training(db, store, settings, tiny_training(5000, 25), "alice", "Thor")
    _, other_run, waiting = await submit_training(db, store, settings, tiny_training(5, 5), "bob", "Loki")
    worker = start_worker(own_folder(worker_env, mode, tmp_path / "worker-host"), log)
    try:
        async def training_checkpointed():
            return any(e.kind == "checkpoint" for e in await jobs.events_after(db, jobs.START, [training.id]))

        await eventually(training_checkpointed, "the training's first checkpoint", log)

        # A queued job disappears from the queue at once; its run never starts.
        cancelled = await jobs.request_cancel(db, waiting.id)
        assert cancelled.status == "cancelled" and await jobs.queue_position(db, waiting.id) is None
        assert (await runs.get_run(db, other_run)).status == "cancelled"

        # A generation submitted mid-training is served between two steps, long before the training ends.
        generation = await jobs.submit_job(db, settings, "generate", LOCAL_GUILD, "carol", painting())
        done = await eventually(lambda: ended(db, generation.id), "the generation", log)
        assert done.status == "succeeded", done.error
        assert len(done.result["files"]) == 1 and await store.exists(done.result["files"][0])
        assert (await jobs.get_job(db, training.id)).status == "running"

        # A corrupt LoRA file fails that generation only; the next one and the training carry on.
        checkpoint = (await runs.list_checkpoints(db, run_id))[0]
        broken = f"{checkpoint.path}-broken/pytorch_lora_weights.safetensors"
        await store.put_bytes(broken, b"this is not a LoRA")
        broken_id = await runs.add_checkpoint(
            db, run_id, checkpoint.step + 1, checkpoint.path + "-broken", broken, checkpoint.kohya_file
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
        assert kept and all([await store.exists(c.diffusers_file) for c in kept if c.id != broken_id])
        assert stopped.finished_at > good_done.finished_at > done.finished_at
        assert await started_events(db, waiting.id) == []
        assert worker.poll() is None  # the failures never took the worker down
    finally:
        stop_worker(worker)


@pytest.mark.both_modes
async def test_a_worker_that_painted_a_forgotten_pet_paints_the_next_pet_as_a_fresh_worker_does(
    db, store: FileStore, settings: Settings, worker_env: dict[str, str], tmp_path: Path, mode: str
) -> None:
    """Forget the newest pet, teach and train another: its rows may not take the old ones' ids,
    and a worker must not paint the old pet's LoRA from its cache for the new one."""
    log = tmp_path / "worker.log"

    async def trained(name: str, user: str):
        pet, _, job = await submit_training(db, store, settings, tiny_training(2, 2), user, name)
        done = await eventually(lambda: ended(db, job.id), f"{name}'s training", log)
        assert done.status == "succeeded", done.error
        return pet

    async def painted(pet) -> list[np.ndarray]:
        job = await jobs.submit_job(
            db, settings, "generate", LOCAL_GUILD, "carol", painting(pet_id=pet.id, prompt="a photo of TOK cat", steps=2)
        )
        done = await eventually(lambda: ended(db, job.id), f"the painting of {pet.name}", log)
        assert done.status == "succeeded", done.error
        return [np.asarray(Image.open(await store.local_path(key)).convert("RGB")) for key in done.result["files"]]

    worker = start_worker(own_folder(worker_env, mode, tmp_path / "worker-host"), log)
    try:
        thor = await trained("Thor", "alice")
        thor_pictures = await painted(thor)
        await forget_pet(db, store, thor)
        loki = await trained("Loki", "bob")
        loki_pictures = await painted(loki)
    finally:
        stop_worker(worker)
    fresh = start_worker(own_folder(worker_env, mode, tmp_path / "fresh-host"), log)
    try:
        expected = await painted(loki)
    finally:
        stop_worker(fresh)
    assert all(np.array_equal(got, want) for got, want in zip(loki_pictures, expected, strict=True))
    assert not all(np.array_equal(got, old) for got, old in zip(loki_pictures, thor_pictures, strict=True))


async def test_killed_worker_is_restarted_and_the_training_resumes_from_its_checkpoint(
    db, store: FileStore, settings: Settings, worker_env: dict[str, str], tmp_path: Path, mode: str
) -> None:
    _, run_id, training = await submit_training(db, store, settings, tiny_training(60, 20), "alice", "Thor")
    supervisor = WorkerSupervisor(
        dataclasses.replace(settings, workers="auto"), own_folder(worker_env, mode, tmp_path / "worker-host")
    )
    [first_pid] = await supervisor.start()
    try:
        async def checkpointed():
            return await runs.list_checkpoints(db, run_id)

        await eventually(checkpointed, "the first checkpoint")
        os.kill(first_pid, signal.SIGKILL)
        resumed_from = (await runs.list_checkpoints(db, run_id))[-1].step  # the latest one the dead worker wrote
        last_seen = (await jobs.events_after(db, jobs.START, [training.id]))[-1].position

        finished = await eventually(lambda: ended(db, training.id), "the resumed training")
        assert supervisor.restarts == 1 and supervisor.pids != [first_pid]
        assert finished.status == "succeeded", finished.error
        assert finished.attempts == 2 and finished.result["step"] == 60

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
    db, settings: Settings, worker_env: dict[str, str], tmp_path: Path, mode: str
) -> None:
    settings = dataclasses.replace(settings, max_queued_generations_per_user=10)
    submitted = [
        await jobs.submit_job(db, settings, "generate", LOCAL_GUILD, "carol", painting(seed=seed)) for seed in range(4)
    ]
    workers = [
        start_worker(own_folder(worker_env, mode, tmp_path / f"host-{index}"), tmp_path / f"worker-{index}.log")
        for index in range(2)
    ]
    try:
        for job in submitted:
            done = await eventually(lambda job=job: ended(db, job.id), f"job {job.id}", tmp_path / "worker-0.log")
            assert done.status == "succeeded", done.error
        for job in submitted:
            assert len(await started_events(db, job.id)) == 1
        generation_ids = {(await jobs.get_job(db, job.id)).generation_id for job in submitted}
        assert len(generation_ids) == len(submitted)
    finally:
        for worker in workers:
            stop_worker(worker)
