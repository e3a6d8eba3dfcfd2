"""Many hosts on one machine: worker processes with their own local folders and host ids,
sharing one PostgreSQL and one S3 endpoint (both real servers), on the tiny model.

A "host" is a `python -m engine.gpu.worker` process with its own PAWTRAIT_DATA_DIR (a cache) and
PAWTRAIT_HOST_ID, so it can neither see the other's files nor its process ids: everything
they share goes through the database and the bucket, as on separate machines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from config.settings import Settings
from storage import jobs, keys, runs
from storage.db import Database
from storage.files import FileStore, S3Files
from storage.pet_deletion import forget_pet, sweep_orphans
from storage.pets import LOCAL_GUILD, get_pet
from storage.photos import list_photos

from bot_harness import BotProcess
from fake_discord import FakeDiscord
from training_helpers import pet_with_photos
from worker_helpers import REPO, ended, eventually, painting, start_worker, stop_worker, submit_training, tiny_training

# A host silent this long loses its job to another (PAWTRAIT_WORKER_TIMEOUT_S; 20 s by default).
TIMEOUT_S = 4


@pytest.fixture
def mode() -> str:
    return "distributed"


class Host:
    """One worker "host": its own folder and host id, the shared database and bucket."""

    def __init__(self, name: str, env: dict[str, str], folder: Path, **extra: str) -> None:
        self.name = name
        self.folder = folder / name
        self.log = folder / f"{name}.log"
        self.env = {
            **env, "OMP_NUM_THREADS": "1", "PAWTRAIT_HOST_ID": name, "PAWTRAIT_DATA_DIR": str(self.folder),
            "PAWTRAIT_WORKER_TIMEOUT_S": str(TIMEOUT_S), **extra,
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> Host:
        self.process = start_worker(self.env, self.log)
        return self

    def runs(self, worker_id: str | None) -> bool:
        return bool(worker_id) and worker_id.startswith(f"{self.name}:")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            stop_worker(self.process)


@pytest.fixture
def hosts(env: dict[str, str], tmp_path: Path):
    made: list[Host] = []

    def make(name: str, **extra: str) -> Host:
        host = Host(name, env, tmp_path, **extra)
        made.append(host)
        return host

    yield make
    for host in made:
        host.stop()


async def starts(db: Database, job_id: int) -> list[str]:
    """The worker ids that started the job, in order."""
    return [event.data["worker"] for event in await jobs.events_after(db, jobs.START, [job_id]) if event.kind == "started"]


async def events_of(db: Database, job_id: int, kind: str) -> list[jobs.JobEvent]:
    return [event for event in await jobs.events_after(db, jobs.START, [job_id]) if event.kind == kind]


async def checkpointed(db: Database, job_id: int):
    return await events_of(db, job_id, "checkpoint")


async def host_a_silenced_after_a_checkpoint(
    db: Database, store: FileStore, settings: Settings, hosts, steps: int, signum: int
) -> tuple[int, jobs.Job, Host, Host]:
    """Alice's training of `steps` (a checkpoint every 10) on host A, which gets `signum` (killed or
    frozen) once its first checkpoint is written, host B up beside it to take the job over;
    returns (run id, job, host A, host B)."""
    _, run_id, training = await submit_training(db, store, settings, tiny_training(steps, 10), "alice", "Thor")
    a = hosts("host-a").start()
    await eventually(lambda: checkpointed(db, training.id), "host A's first checkpoint", a.log)
    b = hosts("host-b").start()
    a.signal(signum)
    return run_id, training, a, b


async def test_a_killed_hosts_training_is_finished_elsewhere_from_its_checkpoint_in_s3(
    db: Database, store: FileStore, settings: Settings, hosts
) -> None:
    run_id, training, a, b = await host_a_silenced_after_a_checkpoint(db, store, settings, hosts, 40, signal.SIGKILL)
    resumed_from = (await runs.list_checkpoints(db, run_id))[-1].step

    done = await eventually(lambda: ended(db, training.id), "the training on host B", b.log)
    assert done.status == "succeeded", done.error
    assert done.attempts == 2 and done.result["step"] == 40
    first, second = await starts(db, training.id)
    assert a.runs(first) and b.runs(second)
    requeued = [event for event in await events_of(db, training.id, "queued") if event.data.get("requeued")]
    assert "silent" in requeued[0].data["requeued"]
    after_takeover = [e.data["step"] for e in await events_of(db, training.id, "progress") if e.position > requeued[0].position]
    assert after_takeover and min(after_takeover) > resumed_from  # went on from the checkpoint, not from step 0
    # Host B's own folder never held A's files: it fetched the photos (and the state it resumed
    # from) out of the bucket into its cache.
    assert list(b.folder.glob("cache/**/photos/prepared-*.png"))
    for checkpoint in await runs.list_checkpoints(db, run_id):
        assert await store.exists(checkpoint.diffusers_file) and await store.exists(checkpoint.kohya_file)


async def test_a_frozen_host_that_wakes_up_after_losing_its_job_writes_nothing(
    db: Database, store: FileStore, settings: Settings, hosts
) -> None:
    run_id, training, a, b = await host_a_silenced_after_a_checkpoint(db, store, settings, hosts, 60, signal.SIGSTOP)

    async def taken_over():
        return len(await starts(db, training.id)) == 2

    await eventually(taken_over, "host B to take the job over", b.log)
    a.signal(signal.SIGCONT)  # A wakes up mid-step, still believing the job is its own
    done = await eventually(lambda: ended(db, training.id), "the training on host B", b.log)
    assert done.status == "succeeded", done.error
    assert done.attempts == 2 and b.runs(done.worker_id)
    assert len(await events_of(db, training.id, "finished")) == 1
    assert (await runs.get_run(db, run_id)).status == "succeeded"

    async def a_noticed():
        return "another worker runs it now" in a.log.read_text(errors="replace")

    await eventually(a_noticed, "host A to drop the job", a.log)
    assert a.process.poll() is None  # A carries on as a worker
    assert len(await events_of(db, training.id, "finished")) == 1 and len(await starts(db, training.id)) == 2
    steps = [checkpoint.step for checkpoint in await runs.list_checkpoints(db, run_id)]
    assert steps == sorted(set(steps)) and steps[-1] == 60
    for checkpoint in await runs.list_checkpoints(db, run_id):
        assert await store.exists(checkpoint.diffusers_file)


async def test_an_idle_host_takes_a_new_generation_and_busy_hosts_serve_it_between_steps(
    db: Database, store: FileStore, settings: Settings, hosts
) -> None:
    settings = dataclasses.replace(settings, max_queued_trainings_per_user=5)
    a, b = hosts("host-a").start(), hosts("host-b").start()

    async def both_idle():
        from storage import workers

        return len([w for w in await workers.live(db, 10) if w.state == "idle"]) == 2

    await eventually(both_idle, "both hosts to be ready", a.log)
    _, _, first = await submit_training(db, store, settings, tiny_training(5000, 1000), "alice", "Thor")
    await eventually(lambda: starts(db, first.id), "the first training to start", a.log)
    (trainer,) = await starts(db, first.id)
    idle = b if a.runs(trainer) else a

    generation = await jobs.submit_job(db, settings, "generate", LOCAL_GUILD, "carol", painting())
    done = await eventually(lambda: ended(db, generation.id), "the generation", idle.log)
    assert done.status == "succeeded", done.error
    assert idle.runs(done.worker_id), "the busy host paused its training instead of leaving the picture to the idle one"
    assert (await jobs.get_job(db, first.id)).status == "running"

    _, _, second = await submit_training(db, store, settings, tiny_training(5000, 1000), "bob", "Loki")
    await eventually(lambda: starts(db, second.id), "the second training to start", idle.log)
    assert idle.runs((await starts(db, second.id))[0])
    busy = await jobs.submit_job(db, settings, "generate", LOCAL_GUILD, "carol", painting(seed=8))
    done = await eventually(lambda: ended(db, busy.id), "the generation while both train", a.log)
    assert done.status == "succeeded", done.error
    assert [(await jobs.get_job(db, job.id)).status for job in (first, second)] == ["running", "running"]
    for job in (first, second):
        await jobs.request_cancel(db, job.id)


SUBMIT = textwrap.dedent("""
    import asyncio, os, sys, time
    import engine.usecases.jobs  # registers the job kinds with the queue, as every process using it does
    from config.settings import Settings
    from storage import jobs
    from storage.db import open_database

    async def main():
        db = await open_database(os.environ["PAWTRAIT_DATABASE_URL"])
        settings = Settings(max_queued_generations_per_user=1)
        go = sys.argv[1]
        while not os.path.exists(go):
            time.sleep(0.001)
        try:
            await jobs.submit_job(db, settings, "generate", "local", "alice", {"request": {"prompt": "x"}})
            print("queued")
        except jobs.QueueLimitReached as error:
            print("refused:", error)
        await db.close()

    asyncio.run(main())
""")


async def test_two_processes_submitting_for_one_member_at_once_keep_the_limit(
    db: Database, env: dict[str, str], tmp_path: Path
) -> None:
    for attempt in range(3):
        go = tmp_path / f"go-{attempt}"
        processes = [
            subprocess.Popen([sys.executable, "-c", SUBMIT, str(go)], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)
        ]
        await asyncio.sleep(2.0)  # both have opened the database and wait at the line
        go.touch()
        outputs = sorted(process.communicate(timeout=60)[0].strip().splitlines()[-1] for process in processes)
        assert outputs[0] == "queued" and outputs[1].startswith("refused: You already have 1 generation waiting"), outputs
        (waiting,) = [job for job in await jobs.list_jobs(db) if job.status == "queued"]
        await jobs.request_cancel(db, waiting.id)


async def test_a_postgresql_restart_mid_training_loses_nothing(
    db: Database, store: FileStore, settings: Settings, hosts, postgres_server
) -> None:
    _, run_id, training = await submit_training(db, store, settings, tiny_training(60, 10), "alice", "Thor")
    a = hosts("host-a").start()
    await eventually(lambda: checkpointed(db, training.id), "the first checkpoint", a.log)
    restarted_at = time.monotonic()
    await asyncio.to_thread(postgres_server.restart)
    done = await eventually(lambda: ended(db, training.id), "the training after the restart", a.log)
    assert time.monotonic() > restarted_at
    assert done.status == "succeeded", done.error
    assert done.attempts == 1  # the worker rode it out: no requeue, no second attempt
    assert [c.step for c in await runs.list_checkpoints(db, run_id)] == [10, 20, 30, 40, 50, 60]
    assert [e.data["step"] for e in await events_of(db, training.id, "checkpoint")] == [10, 20, 30, 40, 50, 60]


async def test_killing_workers_at_any_moment_leaves_no_row_without_its_file_and_forget_leaves_no_file(
    db: Database, store: FileStore, settings: Settings, hosts
) -> None:
    # Checkpoints every 2 steps and validation images every 4: files written all the time.
    params = tiny_training(24, 2, validate_every=4)
    pet, run_id, training = await submit_training(db, store, settings, params, "alice", "Thor")
    for kill in range(3):  # a worker that crashes and is started again on the same host
        host = hosts(f"host-a-{kill}", PAWTRAIT_HOST_ID="host-a", PAWTRAIT_MAX_JOB_ATTEMPTS="10").start()
        await eventually(lambda: checkpointed(db, training.id), "a checkpoint", host.log)
        await asyncio.sleep(0.3 * kill)  # a different moment of the write cycle each time
        host.signal(signal.SIGKILL)
        host.process.wait()
    last = hosts("host-a-last", PAWTRAIT_HOST_ID="host-a", PAWTRAIT_MAX_JOB_ATTEMPTS="10").start()
    done = await eventually(lambda: ended(db, training.id), "the training", last.log)
    assert done.status == "succeeded", done.error
    generation = await jobs.submit_job(db, settings, "generate", LOCAL_GUILD, "owner",
                                       painting(pet_id=pet.id, prompt="a photo of TOK cat"))
    assert (await eventually(lambda: ended(db, generation.id), "a picture of the pet", last.log)).status == "succeeded"

    named = [photo.prepared_path for photo in await list_photos(db, pet.id)]
    for checkpoint in await runs.list_checkpoints(db, run_id):
        named += [checkpoint.diffusers_file, checkpoint.kohya_file]
    named += [image.path for image in await runs.list_validation_images(db, run_id)]
    named += (await jobs.get_job(db, generation.id)).result["files"]
    assert [key for key in named if not await store.exists(key)] == []  # no row names a missing file

    await sweep_orphans(db, store, min_age_s=0)  # what a crash left without a row goes...
    assert [key for key in named if not await store.exists(key)] == []  # ...and nothing a row names
    assert await sweep_orphans(db, store, min_age_s=0) == []

    await forget_pet(db, store, await get_pet(db, pet.id))
    left = [item.key for prefix in (keys.pet_prefix(pet.id), keys.run_prefix(run_id)) for item in await store.list(prefix)]
    assert left == [] and [key for key in named if await store.exists(key)] == []


async def test_two_hosts_training_cats_at_once_draw_the_class_images_once(
    db: Database, store: FileStore, settings: Settings, hosts
) -> None:
    params = dataclasses.replace(
        tiny_training(4, 2), prior_preservation=True, class_images=4
    )
    settings = dataclasses.replace(settings, max_queued_trainings_per_user=5)
    submitted = [await submit_training(db, store, settings, params, owner, name)
                 for owner, name in (("alice", "Thor"), ("bob", "Tiger"))]
    a, b = hosts("host-a").start(), hosts("host-b").start()
    for _, _, training in submitted:
        done = await eventually(lambda training=training: ended(db, training.id), "both trainings", a.log)
        assert done.status == "succeeded", done.error
    assert {a.runs(job.worker_id) for job in [await jobs.get_job(db, t.id) for _, _, t in submitted]} == {True, False}
    drew = [host.name for host in (a, b) if "drawing 4 class images" in host.log.read_text(errors="replace")]
    assert len(drew) == 1, f"class images drawn by {drew or 'nobody'}"
    assert sorted(item.key for item in await store.list(keys.class_images("cat"))) == [
        keys.class_image("cat", index) for index in range(4)
    ]


async def test_a_forgotten_pets_copies_leave_another_hosts_cache_after_its_sweep(
    db: Database, store: FileStore, hosts
) -> None:
    forgotten, kept = await pet_with_photos(db, store, name="Thor"), await pet_with_photos(db, store, name="Loki")
    b = hosts("host-b", PAWTRAIT_CACHE_SWEEP_S="1")
    # Host B has used both pets' photos: they are copies in its own cache folder.
    b_files = S3Files(store.bucket, store.prefix, b.folder / "cache", store._env)
    for pet in (forgotten, kept):
        for photo in await list_photos(db, pet.id):
            await b_files.local_path(photo.prepared_path)
    b.start()

    async def b_ready() -> bool:
        return b.log.is_file() and " ready on " in b.log.read_text(errors="replace")

    await eventually(b_ready, "host B's worker to start", b.log)  # its chores run from here on

    await forget_pet(db, store, forgotten)  # on this host (the bot's), with its own cache

    async def copies_of(pet_id: int) -> list[Path]:
        return list(b_files.cache_root.glob(f"pets/{pet_id}/**/*.png"))

    async def forgotten_gone() -> bool:
        return not await copies_of(forgotten.id)

    await eventually(forgotten_gone, "host B's sweep to drop the forgotten pet's copies", b.log)
    assert len(await copies_of(kept.id)) == 3  # another pet's copies stay


async def test_a_bot_hosts_copies_of_deleted_files_leave_its_cache(
    db: Database, store: FileStore, env: dict[str, str], tmp_path: Path
) -> None:
    pet = await pet_with_photos(db, store, name="Thor")
    [photo, *_] = await list_photos(db, pet.id)
    folder = tmp_path / "bot-host"
    bot_files = S3Files(store.bucket, store.prefix, folder / "cache", store._env)
    copy = await bot_files.local_path(photo.prepared_path)  # the bot posted it: a copy on its host
    fake = FakeDiscord()
    await fake.start()
    fake.add_guild("Cat Club", owner="alice")
    bot = BotProcess(
        dict(env, **fake.bot_env(), PAWTRAIT_DATA_DIR=str(folder), PAWTRAIT_WORKERS="0", PAWTRAIT_CACHE_SWEEP_S="1"),
        tmp_path / "bot.log",
    )
    await bot.start(fake)
    try:
        await forget_pet(db, store, pet)  # by another host: only the bucket and the database change

        async def copy_gone() -> bool:
            return not copy.exists()

        await eventually(copy_gone, "the bot's host to drop its copy", bot.log_path)
    finally:
        await bot.stop()
        await fake.stop()
