"""The worker's parts that need no worker process: how many workers, whose jobs are orphaned,
what a failure tells the user, the housekeeping chores, and what it does when idle."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
import sys
import time

import torch

from engine.generation.generator import Generator
from engine.models import load_base_model
from engine.settings import Settings
from engine.worker import chores
from engine.worker.executor import Executor
from engine.worker.failures import describe_failure
from engine.worker.process import Worker
from engine.worker.recovery import make_worker_id, recover_orphans, why_gone
from engine.worker.supervisor import plan_workers
from storage import jobs
from storage.db import connect
from storage.files import DataDir
from storage.pets import LOCAL_GUILD


async def test_worker_count_follows_the_setting(settings: Settings) -> None:
    assert await plan_workers(dataclasses.replace(settings, workers="0")) == []
    assert await plan_workers(dataclasses.replace(settings, workers="auto")) == [None]  # CPU: one
    assert await plan_workers(dataclasses.replace(settings, workers="3")) == [None, None, None]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


async def test_only_jobs_of_dead_or_silent_workers_are_requeued(db, settings: Settings) -> None:
    host = socket.gethostname()
    mine = make_worker_id(None)
    dead = f"{host}:{_dead_pid()}:cpu"
    alive_elsewhere = f"{host}:{os.getppid()}:gpu1"
    assert why_gone(mine, 0.0, mine) is None
    assert why_gone(alive_elsewhere, 5.0, mine) is None
    assert "stopped" in why_gone(dead, 1.0, mine)
    assert "silent" in why_gone("other-host:1:gpu0", 10_000.0, mine)

    settings = dataclasses.replace(settings, max_queued_generations_per_user=5)
    for worker in (dead, alive_elsewhere):
        await jobs.submit_job(db, settings, "generate", LOCAL_GUILD, "u", {"request": {"prompt": "x"}})
        await jobs.claim_next_job(db, worker)
    recovered = await recover_orphans(db, settings, mine)
    assert [(j.status, j.error) for j in recovered] == [("queued", "requeued: its worker process stopped while running it")]
    assert [j.worker_id for j in await jobs.running_jobs(db)] == [alive_elsewhere]


def test_failures_are_explained_in_plain_words() -> None:
    oom = describe_failure("generate", torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert oom.startswith("ran out of GPU memory while painting") and "fewer images" in oom
    assert "lean" in describe_failure("train", RuntimeError("CUDA error: out of memory"))
    assert describe_failure("generate", ValueError("the prompt is empty")) == "the prompt is empty"
    assert describe_failure("generate", KeyError("request")) == "painting failed: KeyError: 'request'"


async def test_chores_expire_temporary_files_and_old_generations(db, settings: Settings) -> None:
    data = DataDir(settings.data_dir)
    old, new = data.tmp_dir() / "preview-job1-step3.png", data.tmp_dir() / "preview-job2-step3.png"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    an_hour_ago = time.time() - chores.TMP_MAX_AGE_S - 60
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert chores.clean_tmp(data) == 1
    assert not old.exists() and new.exists()

    for created in ("2020-01-01T00:00:00.000Z", None):
        cursor = await db.execute(
            "INSERT INTO generations (guild_id, prompt, seed, steps, guidance, width, height, requested_by, created_at) "
            "VALUES ('g', 'p', 1, 30, 5, 64, 64, 'u', coalesce(?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
            (created,),
        )
        folder = data.generation_dir(cursor.lastrowid)
        folder.mkdir(parents=True)
        (folder / "1-seed-1.png").write_bytes(b"png")
    assert await chores.prune_generations(db, data, days=0) == 0  # 0 = keep forever
    assert await chores.prune_generations(db, data, days=30) == 1
    async with db.execute("SELECT id FROM generations") as cursor:
        [(kept,)] = await cursor.fetchall()
    assert data.generation_dir(kept).is_dir() and not data.generation_dir(kept - 1).exists()


async def test_an_idle_worker_compiles_ahead_and_a_picture_asked_for_meanwhile_goes_first(db, settings: Settings) -> None:
    """With nothing queued the worker compiles the generator's wanted shapes one small step at a
    time, looking at the queue between steps: a picture requested meanwhile is painted at once."""
    worker = Worker(settings)
    worker.db, worker.side_db = await connect(settings.db_path), await connect(settings.db_path)
    base = load_base_model(settings)
    worker.executor = Executor(settings, worker.data, base, worker.worker_id, worker.db, worker.side_db)
    # The CPU compiles nothing with inductor; dynamo with a backend that runs the traced graph as is.
    generator = Generator(base, memory="full", size_scale=settings.resolution / 1024, compile=True,
                          compile_backend=lambda graph, example_inputs: graph.forward)
    worker.executor.generator = generator
    loop = asyncio.get_running_loop()
    steps: list[bool] = []
    painted_after: list[int] = []
    compile_ahead, generate = generator.compile_ahead, generator.generate

    def compile_step() -> bool:
        steps.append(compile_ahead())
        if len(steps) == 2:  # somebody asks for a picture while the worker compiles
            payload = {"request": {"prompt": "a photo of a cat", "steps": 1, "seed": 7}}
            asyncio.run_coroutine_threadsafe(jobs.submit_job(db, settings, "generate", LOCAL_GUILD, "carol", payload), loop).result()
        return steps[-1]

    def paint(*args, **kwargs):
        painted_after.append(len(steps))
        return generate(*args, **kwargs)

    generator.compile_ahead, generator.generate = compile_step, paint
    try:
        await worker._work()
    finally:
        await worker.close()
    assert painted_after == [2]  # right after the step during which it was asked for
    assert steps[-1] is False and len(steps) > 4  # then compiled on to the end
    assert generator.ahead is not None and not generator.ahead.pending
    assert (1, settings.resolution, settings.resolution) in generator.ahead.ready
    job = (await jobs.list_jobs(db, active_only=False))[0]
    assert job.status == "succeeded"
