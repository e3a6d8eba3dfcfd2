"""The worker's parts that need no worker process: how many workers, whose jobs are orphaned,
what a failure tells the user, the housekeeping chores, and what it does when idle."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from sqlalchemy import event, select, update

from config.settings import Settings
from engine.gpu.generation.generator import Generator
from engine.gpu.generation.loras import has_tuner_layers
from engine.gpu.models import load_base_model
from engine.gpu.training.compile_ahead import TrainingCompileAhead
from engine.gpu.worker import chores
from engine.gpu.worker.executor import Executor
from engine.gpu.worker.failures import describe_failure
from engine.gpu.worker.process import Worker
from engine.gpu.worker.recovery import make_worker_id, recover_orphans, why_gone
from engine.gpu.worker.supervisor import plan_workers
from engine.usecases.teach import teach_photos
from engine.usecases.training.params import TrainingParams
from storage import jobs, keys
from storage.connect import file_store, open_storage
from storage.db import Database
from storage.files import DataDir, FileStore
from storage.generations import record_generation
from storage.pet_deletion import sweep_orphans
from storage.pets import LOCAL_GUILD
from storage.photos import list_photos
from storage.schema import generations
from storage.wakeup import open_wakeup

import photo_samples as samples
from conftest import distributed
from training_helpers import run_with_a_checkpoint


async def test_worker_count_follows_the_setting(settings: Settings) -> None:
    assert await plan_workers(dataclasses.replace(settings, workers="0")) == []
    assert await plan_workers(dataclasses.replace(settings, workers="auto")) == [None]  # CPU: one
    assert await plan_workers(dataclasses.replace(settings, workers="3")) == [None, None, None]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


async def test_only_jobs_of_dead_or_silent_workers_are_requeued(db: Database, settings: Settings) -> None:
    host, timeout = settings.host_id, 3.0
    mine = make_worker_id(host, None)
    assert mine.startswith(f"{host}:{os.getpid()}:cpu:") and mine != make_worker_id(host, None)  # a boot id each
    assert make_worker_id(host, 1).startswith(f"{host}:{os.getpid()}:gpu1:")
    dead = f"{host}:{_dead_pid()}:cpu:0a0b0c"
    alive_here = f"{host}:{os.getppid()}:gpu1:0a0b0c"
    elsewhere = f"other-host:{_dead_pid()}:gpu0:0a0b0c"  # that pid means nothing on this host
    assert why_gone(mine, 0.0, mine, host, timeout) is None
    assert why_gone(mine, 10_000.0, mine, host, timeout) is None  # never itself
    assert why_gone(alive_here, 1.0, mine, host, timeout) is None
    assert why_gone(elsewhere, 1.0, mine, host, timeout) is None  # beat recently: still working
    stopped = why_gone(dead, 1.0, mine, host, timeout)
    assert stopped is not None and "stopped" in stopped.reason and not stopped.silent
    silent = why_gone(elsewhere, 10_000.0, mine, host, timeout)
    assert silent is not None and "silent for more than 3 s" in silent.reason and silent.silent

    settings = dataclasses.replace(settings, max_queued_generations_per_user=5, worker_timeout_s=timeout)
    for worker in (dead, alive_here, elsewhere):
        await jobs.submit_job(db, settings, "generate", LOCAL_GUILD, "u", {"request": {"prompt": "x"}})
        assert (await jobs.claim_next_job(db, worker)).worker_id == worker
    recovered = await recover_orphans(db, settings, mine)
    # The dead process's job at once; the other host's only once it has been silent too long.
    assert [(j.status, j.error) for j in recovered] == [("queued", "requeued: its worker process stopped while running it")]
    assert [r.job.worker_id for r in await jobs.running_jobs(db)] == [alive_here, elsewhere]
    await asyncio.sleep(timeout + 0.5)
    await jobs.heartbeat(db, alive_here, [running.job.id for running in await jobs.running_jobs(db)])
    recovered = await recover_orphans(db, settings, mine)
    assert [(j.status, j.error) for j in recovered] == [("queued", "requeued: its worker went silent for more than 3 s")]
    assert [r.job.worker_id for r in await jobs.running_jobs(db)] == [alive_here]


def test_failures_are_explained_in_plain_words() -> None:
    oom = describe_failure("generate", torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert oom.startswith("ran out of GPU memory while painting") and "fewer images" in oom
    assert "lean" in describe_failure("train", RuntimeError("CUDA error: out of memory"))
    assert describe_failure("generate", ValueError("the prompt is empty")) == "the prompt is empty"
    unexpected = describe_failure("generate", KeyError("request"))
    assert unexpected.startswith("painting failed because of a problem on the server") and "KeyError" not in unexpected


async def test_a_database_error_reaches_the_member_without_sql_or_internals(db: Database) -> None:
    """As when `/forget` deletes a pet while it is painted: the picture's row cannot be written."""
    with pytest.raises(Exception) as caught:
        await db.execute(generations.insert().values(guild_id="1", prompt="a photo of TOK"))
    text = describe_failure("generate", caught.value)
    assert text.startswith("painting failed because of a problem on the server")
    for internal in ("SQL", "INSERT", "generations", "IntegrityError", "sqlite", "constraint", str(db.url.database)):
        assert internal.lower() not in text.lower()


async def add_generation(db: Database, store: FileStore, created_at: str | None = None) -> list[str]:
    """A generation as the service writes it: pictures in the store, then the row (created `created_at`)."""
    folder = keys.generation_folder(keys.new_tag())
    files = [f"{folder}/1-seed-1.png"]
    await store.put_bytes(files[0], samples.encode(samples.varied_photo(1), "PNG"))
    generation = await record_generation(
        db, files, guild_id="g", pet_id=None, checkpoint_id=None, prompt="p", negative_prompt="", seed=1, steps=30,
        guidance=5.0, width=64, height=64, lora_scale=1.0, requested_by="u",
    )
    if created_at is not None:
        await db.execute(update(generations).where(generations.c.id == generation.id).values(created_at=created_at))
    return files


async def test_chores_expire_temporary_files_and_old_generations(db: Database, store: FileStore, settings: Settings) -> None:
    data = DataDir(settings.data_dir)
    (data.tmp_dir() / "staging").mkdir()
    old, new = data.tmp_dir() / "staging" / "checkpoint-left-by-a-crash.pt", data.tmp_dir() / "generation-now.png"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    an_hour_ago = time.time() - chores.TMP_MAX_AGE_S - 60
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert chores.clean_local_tmp(data) == 1
    assert not old.exists() and new.exists()

    old_files = await add_generation(db, store, created_at="2020-01-01T00:00:00.000Z")
    new_files = await add_generation(db, store)
    assert await chores.prune_generations(db, store, days=0) == 0  # 0 = keep forever
    assert await chores.prune_generations(db, store, days=30) == 1
    assert [row["files"] for row in await db.all(select(generations.c.files))] == [f'["{new_files[0]}"]']
    assert await store.exists(new_files[0]) and not await store.exists(old_files[0])


async def test_expired_previews_leave_the_bucket(settings: Settings, request: pytest.FixtureRequest) -> None:
    """Distributed: previews live in the bucket's tmp/ and expire there; nothing else is touched."""
    store = file_store(distributed(settings, request))
    preview, photo = keys.preview(7, 3), keys.photo(1, "a.png")
    for key in (preview, photo):
        await store.put_bytes(key, b"png")
    assert await chores.clean_store_tmp(store) == 0  # younger than an hour: a front end may still show it
    assert await chores.clean_store_tmp(store, max_age_s=0) == 1
    assert [item.key for item in await store.list("")] == [photo]
    assert await chores.clean_store_tmp(file_store(settings), max_age_s=0) == 0  # a folder: clean_local_tmp's work


async def test_the_sweep_removes_files_no_row_points_at_and_keeps_the_rest(
    db: Database, store: FileStore, settings: Settings
) -> None:
    """What a crash between writing files and committing their rows leaves behind is swept;
    every file a row points at stays."""
    report = await teach_photos(
        db, store, settings, LOCAL_GUILD, "owner", "Thor", "cat",
        [(f"IMG_{seed}.jpg", samples.jpeg(seed)) for seed in (1, 2)], added_by="owner",
    )
    pet = report.pet
    assert pet is not None
    run = await run_with_a_checkpoint(db, store, pet, 2, extra_files=("training_state.pt",))
    pictures = await add_generation(db, store)
    # Outside the swept folders: never touched.
    class_image, preview = keys.class_image("cat", 0), keys.preview(1, 2)
    for key in (class_image, preview):
        await store.put_bytes(key, b"png")
    kept = {item.key for item in await store.list("")}

    orphans = {
        keys.photo(pet.id, "written-before-a-crash.jpg"),
        f"{keys.checkpoint(run.run_id, 4, keys.new_tag())}/pytorch_lora_weights.safetensors",  # its row never came
        keys.validation_image(run.run_id, 4, 0, keys.new_tag()),
        f"{keys.generation_folder(keys.new_tag())}/1-seed-9.png",
        f"{keys.contact_sheets(pet.id + 1)}/0123456789abcdef.png",  # the sheet of a pet that is gone
        f"{keys.run_prefix(run.run_id + 1)}/validation/step-00000-0-abcd.png",  # a run that is gone
    }
    for key in orphans:
        await store.put_bytes(key, b"left behind")

    assert await sweep_orphans(db, store) == []  # too young: maybe a write whose row is on its way
    assert await chores.sweep(db, store) == 0
    assert set(await sweep_orphans(db, store, min_age_s=0)) == orphans
    assert {item.key for item in await store.list("")} == kept
    photo_files = {path for photo in await list_photos(db, pet.id) for path in (photo.original_path, photo.prepared_path)}
    assert len(photo_files) == 4 and photo_files <= kept
    checkpoint_files = {item.key for item in await store.list(run.checkpoint)}
    assert len(checkpoint_files) == 3 and checkpoint_files <= kept
    assert {run.validation, *pictures, class_image, preview} <= kept
    sheet_keys = {item.key for item in await store.list(keys.contact_sheets(pet.id))}
    assert len(sheet_keys) == 1 and sheet_keys <= kept
    assert await sweep_orphans(db, store, min_age_s=0) == []


async def test_an_idle_worker_compiles_ahead_and_a_picture_asked_for_meanwhile_goes_first(db, settings: Settings) -> None:
    """With nothing queued the worker compiles the generator's wanted shapes one small step at a
    time, looking at the queue between steps: a picture requested meanwhile is painted at once."""
    worker = Worker(settings)
    worker.db, worker.store = await open_storage(settings)
    worker.wakeup = open_wakeup(worker.db)
    base = load_base_model(settings)
    worker.executor = Executor(settings, worker.db, worker.store, worker.data, base, worker.worker_id)
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
        if not steps[-1]:
            worker._stopping = True  # all compiled: the test's worker stops instead of sleeping until woken
        return steps[-1]

    def paint(*args, **kwargs):
        painted_after.append(len(steps))
        return generate(*args, **kwargs)

    generator.compile_ahead, generator.generate = compile_step, paint
    try:
        await asyncio.wait_for(worker._work(), timeout=120)
    finally:
        await worker.close()
    assert painted_after == [2]  # right after the step during which it was asked for
    assert steps[-1] is False and len(steps) > 4  # then compiled on to the end
    assert generator.ahead is not None and not generator.ahead.pending
    assert (1, settings.resolution, settings.resolution) in generator.ahead.ready
    job = (await jobs.list_jobs(db, active_only=False))[0]
    assert job.status == "succeeded"
    [picture] = job.result["files"]
    assert await file_store(settings).exists(picture)


@pytest.mark.both_modes
async def test_a_worker_that_lost_the_answer_to_its_claim_gives_the_job_back_and_paints_it(
    db, settings: Settings, mode: str
) -> None:
    """The claim's COMMIT goes through, then its answer is lost: PostgreSQL's session is
    terminated, SQLite reports a disk error. The worker cannot know it holds the job; it must
    not leave the job 'running' under its id, unpainted, until it restarts."""
    worker = Worker(settings)
    worker.db, worker.store = await open_storage(settings)
    worker.wakeup = open_wakeup(worker.db)
    worker.executor = Executor(settings, worker.db, worker.store, worker.data, load_base_model(settings), worker.worker_id)
    payload = {"request": {"prompt": "a photo of a cat", "steps": 1, "seed": 7}}
    job = await jobs.submit_job(db, settings, "generate", LOCAL_GUILD, "carol", payload)
    lost: list[str] = []

    def commit_then_lose_the_answer(connection) -> None:
        if lost:
            return
        lost.append("the claim")
        dbapi = connection.connection.dbapi_connection
        dbapi.commit()  # the claim is made...
        if mode == "distributed":  # ...and the session dies before the worker hears so
            dbapi.cursor().execute("SELECT pg_terminate_backend(pg_backend_pid())")
        raise sqlite3.OperationalError("disk I/O error")

    event.listen(worker.db.engine.sync_engine, "commit", commit_then_lose_the_answer)
    loop = asyncio.create_task(worker._work())
    try:
        for _ in range(300):
            ended = await jobs.get_job(db, job.id)
            if ended.ended:
                break
            await asyncio.sleep(0.1)
    finally:
        worker._stopping = True
        loop.cancel()
        await worker.close()
    assert lost and ended.status == "succeeded", f"the job is still {ended.status} under {ended.worker_id}"
    assert ended.attempts == 1  # the lost claim is not counted against the job
    events = await jobs.events_after(db, jobs.START, [job.id])
    assert [e.kind for e in events[:4]] == ["queued", "started", "queued", "started"]
    assert events[2].data["requeued"] == "the worker lost the answer to its claim"


async def test_after_the_pictures_an_idle_worker_compiles_the_training_step_and_a_picture_pauses_it(
    db, settings: Settings
) -> None:
    """The training step is compiled when the pictures' shapes are, a piece at a time; a picture asked
    for meanwhile goes first and is painted without the rehearsal's adapter on the UNet."""
    worker = Worker(settings)
    worker.db, worker.store = await open_storage(settings)
    worker.wakeup = open_wakeup(worker.db)
    base = load_base_model(settings)
    worker.executor = Executor(settings, worker.db, worker.store, worker.data, base, worker.worker_id)
    as_traced = lambda graph, example_inputs: graph.forward  # noqa: E731 - the CPU compiles nothing with inductor
    generator = Generator(base, memory="full", size_scale=settings.resolution / 1024, compile=True, compile_backend=as_traced)
    ahead = TrainingCompileAhead(base, as_traced)  # what the executor makes on a GPU
    ahead.want(TrainingParams(resolution=settings.resolution))
    worker.executor.generator, worker.executor.training_ahead = generator, ahead
    loop = asyncio.get_running_loop()
    steps: list[str] = []  # the compile steps that did some work
    asked: list[int] = []
    painted: list[tuple[int, bool]] = []  # (steps before, an adapter on the UNet)
    picture_step, training_step, generate = generator.compile_ahead, ahead.step, generator.generate

    def compile_picture() -> bool:
        done = picture_step()
        steps.extend(["picture"] if done else [])
        return done

    def compile_training() -> bool:
        done = training_step()
        steps.extend(["training"] if done else [])
        if steps.count("training") == 2 and not asked:  # the rehearsal's adapter is on the UNet: a picture is wanted
            payload = {"request": {"prompt": "a photo of a cat", "steps": 1, "seed": 7}}
            asyncio.run_coroutine_threadsafe(jobs.submit_job(db, settings, "generate", LOCAL_GUILD, "carol", payload), loop).result()
            asked.append(len(steps))
        if not done:
            worker._stopping = True  # all compiled: the test's worker stops instead of sleeping until woken
        return done

    def paint(*args, **kwargs):
        painted.append((len(steps), has_tuner_layers(generator.pipe)))
        return generate(*args, **kwargs)

    generator.compile_ahead, ahead.step, generator.generate = compile_picture, compile_training, paint
    try:
        await asyncio.wait_for(worker._work(), timeout=120)
    finally:
        await worker.close()
    first_training = steps.index("training")
    assert first_training > 0 and "picture" not in steps[first_training:]  # the pictures' shapes first
    assert painted == [(asked[0], False)]  # right after the step it was asked in, the UNet clean
    assert steps.count("training") > 3 and ahead.ready and not ahead.pending
    assert not has_tuner_layers(base.pipe)
    [job] = await jobs.list_jobs(db, active_only=False)
    assert job.status == "succeeded"
