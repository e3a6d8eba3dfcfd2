"""`pawtrait migrate-to`: a one-host installation moves to PostgreSQL and a bucket and keeps
every pet, run, checkpoint and picture, which a host with an empty folder then paints from."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from config.settings import Settings
from engine.gpu.generation.generator import Generator
from engine.gpu.generation.service import generate_and_record
from engine.gpu.models import load_base_model
from engine.gpu.training.service import execute_run
from engine.usecases.generation.request import GenerationRequest
from engine.usecases.teach import teach_photos
from engine.usecases.training import TrainingParams, create_run
from storage import runs, transfer, workers
from storage.connect import open_storage
from storage.files import DataDir
from storage.generations import get_generation
from storage.pets import LOCAL_GUILD, find_pet, list_pets

import photo_samples as samples
from cli_helpers import Completed, pawtrait
from conftest import distributed, settings_env


async def migrate_to(source: Settings, target: Settings, *args: str) -> Completed:
    """`pawtrait migrate-to ARGS` on the installation `source`, with the target bucket's AWS variables."""
    env = {**settings_env(source), **{name: value for name, value in target.extra.items() if name.startswith("AWS_")}}
    return await asyncio.to_thread(pawtrait, "migrate-to", *args, env=env, cwd=source.data_dir.parent)


async def test_a_one_host_installation_moves_to_postgresql_and_a_bucket_and_paints_there(
    settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # A one-host installation with a taught and trained pet and a picture of it.
    settings = dataclasses.replace(settings, resolution=64)
    db, store = await open_storage(settings)
    photos = [(f"IMG_{seed}.jpg", samples.jpeg(seed)) for seed in range(3)]
    report = await teach_photos(db, store, settings, LOCAL_GUILD, "alice", "Thor", "cat", photos, "alice")
    run_id = await create_run(db, store, report.pet, TrainingParams(
        steps=2, checkpoint_every=2, validate_every=2, resolution=64, gradient_accumulation=1))
    generator = Generator.from_settings(load_base_model(settings), settings)
    outcome = await execute_run(db, store, DataDir(settings.data_dir), generator, run_id)
    assert outcome.status == "succeeded", outcome.error
    painted = await generate_and_record(
        db, store, DataDir(settings.data_dir), generator,
        GenerationRequest(prompt="a photo of TOK cat", pet_id=report.pet.id, steps=1, seed=3), LOCAL_GUILD, "alice",
    )
    await db.close()

    target = distributed(dataclasses.replace(settings, data_dir=tmp_path / "new-host"), request)
    moved = await migrate_to(settings, target, "--database", target.database, "--files", target.files)
    assert moved.returncode == 0, moved.stderr
    assert "every file a record names is there" in moved.stdout
    assert target.database.split("@")[0].split(":")[-1] not in moved.stdout + moved.stderr  # no password printed

    # A host with an empty folder, on the new storage, finds everything and paints with the pet.
    db, store = await open_storage(target)
    assert await transfer.missing_files(db, store) == []
    pet = await find_pet(db, LOCAL_GUILD, "Thor")
    assert pet is not None and pet.id == report.pet.id and pet.token == report.pet.token
    checkpoints = await runs.list_checkpoints(db, run_id)
    assert [c.step for c in checkpoints] == [2] and await store.exists(checkpoints[0].diffusers_key)
    assert pet.active_checkpoint_id == checkpoints[0].id  # the links back to checkpoints, set after them
    assert (await get_generation(db, painted.generation_id)).files == painted.files
    again = await generate_and_record(
        db, store, DataDir(target.data_dir), Generator.from_settings(load_base_model(target), target),
        GenerationRequest(prompt="a photo of TOK cat", pet_id=pet.id, steps=1, seed=3), LOCAL_GUILD, "alice",
    )
    assert again.generation_id > painted.generation_id  # ids go on after the copied ones
    assert await store.get_bytes(again.files[0]) == await store.get_bytes(painted.files[0])  # same LoRA, same pixels

    # Copying into a database that already has records is refused, and nothing is changed.
    again = await migrate_to(settings, target, "--database", target.database)
    assert again.returncode == 1 and "already has pets" in again.stderr
    assert len(await list_pets(db, LOCAL_GUILD)) == 1
    await db.close()


async def test_it_refuses_while_a_worker_runs(settings: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    db, _ = await open_storage(settings)
    await workers.register(db, "vm:1:gpu0:abc", "vm", "gpu0")
    await db.close()
    target = distributed(dataclasses.replace(settings, data_dir=tmp_path / "new-host"), request)
    refused = await migrate_to(settings, target, "--database", target.database)
    assert refused.returncode == 1 and "Stop the bot and every worker" in refused.stderr
    nowhere = await migrate_to(settings, target)
    assert nowhere.returncode == 2 and "say where to" in nowhere.stderr
