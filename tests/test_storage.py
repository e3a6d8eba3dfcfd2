"""Storage on real SQLite files and folders: migrations, all-or-nothing photo adds, deletion, isolation."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

import engine.teach
import photo_samples as samples
from engine.settings import Settings
from engine.teach import teach_photos
from storage.db import connect, latest_version, schema_version, transaction
from storage.files import DataDir
from storage.pet_deletion import PetBusy, forget_pet, sweep_orphans
from storage.pet_status import pet_summaries
from storage.pets import create_pet, find_pet, list_pets
from storage.photos import list_photos


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", vae=None, device="cpu", resolution=128)


@pytest.fixture
def data(settings: Settings) -> DataDir:
    return DataDir(settings.data_dir)


def photos(*seeds: int) -> list[tuple[str, bytes]]:
    return [(f"IMG_{seed}.jpg", samples.jpeg(seed)) for seed in seeds]


async def teach(db, data: DataDir, settings: Settings, files, name: str = "Thor", guild: str = "guild-1"):
    return await teach_photos(db, data, settings, guild, "alice", name, "cat", files, added_by="alice")


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


async def table_counts(db) -> dict[str, int]:
    counts = {}
    for table in ("pets", "photos", "training_runs", "checkpoints", "validation_images", "generations"):
        async with db.execute(f"SELECT count(*) FROM {table}") as cursor:
            counts[table] = (await cursor.fetchone())[0]
    return counts


async def test_a_first_version_database_upgrades_in_place_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = await connect(path, migrate_to=1)
    assert await schema_version(old) == 1
    await old.execute("INSERT INTO pets (guild_id, owner_id, name, token, class_noun) VALUES ('g', 'u', 'Thor', 'bcdfg', 'cat')")
    await old.execute(
        "INSERT INTO photos (pet_id, sha256, phash, original_name, original_path, prepared_path, width, height, "
        "crop_left, crop_top, crop_size, added_by) VALUES (1, 'aa', '00', 'IMG_1.jpg', 'pets/1/photos/a.jpg', "
        "'pets/1/photos/a-crop.png', 640, 560, 40, 0, 560, 'u')"
    )
    await old.close()

    upgraded = await connect(path)
    try:
        assert await schema_version(upgraded) == latest_version() >= 2
        pet = await find_pet(upgraded, "g", "thor")
        assert pet is not None and pet.token == "bcdfg"
        [photo] = await list_photos(upgraded, pet.id)
        assert photo.original_name == "IMG_1.jpg" and photo.crop_size == 560
        async with upgraded.execute("SELECT count(*) FROM jobs") as cursor:  # a table of a later migration
            assert (await cursor.fetchone())[0] == 0
    finally:
        await upgraded.close()


async def test_wal_and_foreign_keys_are_on(db) -> None:
    async with db.execute("PRAGMA journal_mode") as cursor:
        assert (await cursor.fetchone())[0] == "wal"
    async with db.execute("PRAGMA foreign_keys") as cursor:
        assert (await cursor.fetchone())[0] == 1
    with pytest.raises(sqlite3.IntegrityError):
        await db.execute(
            "INSERT INTO photos (pet_id, sha256, phash, original_name, original_path, prepared_path, width, "
            "height, crop_left, crop_top, crop_size, added_by) VALUES (999, 'a', '0', 'x', 'x', 'x', 1, 1, 0, 0, 1, 'u')"
        )


def fail_on_call(number: int, real):
    calls = {"n": 0}

    def writer(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == number:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    return writer


async def test_a_write_failing_half_way_leaves_no_new_pet_no_rows_no_files(db, data, settings, monkeypatch) -> None:
    monkeypatch.setattr(engine.teach, "atomic_write_bytes", fail_on_call(3, engine.teach.atomic_write_bytes))
    with pytest.raises(OSError, match="No space left"):
        await teach(db, data, settings, photos(1, 2, 3))
    assert await find_pet(db, "guild-1", "Thor") is None
    assert (await table_counts(db))["photos"] == 0
    assert files_under(data.root / "pets") == set()


async def test_a_failure_while_adding_to_a_pet_keeps_exactly_what_it_had(db, data, settings, monkeypatch) -> None:
    report = await teach(db, data, settings, photos(1, 2))
    assert report.pet is not None
    before_rows = await list_photos(db, report.pet.id)
    before_files = files_under(data.pet_dir(report.pet.id))

    # The database refuses the second new row (after its files were written).
    real_insert = engine.teach.insert_photo
    calls = {"n": 0}

    async def failing_insert(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise sqlite3.OperationalError("database or disk is full")
        return await real_insert(*args, **kwargs)

    monkeypatch.setattr(engine.teach, "insert_photo", failing_insert)
    with pytest.raises(sqlite3.OperationalError):
        await teach(db, data, settings, photos(3, 4, 5))
    assert await list_photos(db, report.pet.id) == before_rows
    assert files_under(data.pet_dir(report.pet.id)) == before_files
    for row in before_rows:  # every row still points at a file
        assert data.abs(row.original_path).is_file() and data.abs(row.prepared_path).is_file()


async def add_run_with_outputs(db, data: DataDir, pet_id: int, status: str = "succeeded") -> tuple[int, int]:
    """A training run with a checkpoint, a validation image and a generation, as the trainer would leave them."""
    cursor = await db.execute(
        "INSERT INTO training_runs (pet_id, status, params, step, total_steps) VALUES (?, ?, '{}', 100, 500)",
        (pet_id, status),
    )
    run_id = cursor.lastrowid
    step_dir = data.checkpoint_dir(run_id, 100)
    step_dir.mkdir(parents=True)
    (step_dir / "pytorch_lora_weights.safetensors").write_bytes(b"lora")
    cursor = await db.execute(
        "INSERT INTO checkpoints (run_id, step, path, diffusers_file, kohya_file) VALUES (?, 100, ?, 'a', 'b')",
        (run_id, data.rel(step_dir)),
    )
    checkpoint_id = cursor.lastrowid
    data.validation_dir(run_id).mkdir(parents=True)
    (data.validation_dir(run_id) / "0.png").write_bytes(b"png")
    await db.execute(
        "INSERT INTO validation_images (run_id, step, checkpoint_id, prompt, seed, path) VALUES (?, 100, ?, 'p', 1, ?)",
        (run_id, checkpoint_id, f"runs/{run_id}/validation/0.png"),
    )
    cursor = await db.execute(
        "INSERT INTO generations (guild_id, pet_id, checkpoint_id, prompt, seed, steps, guidance, width, height, "
        "requested_by) VALUES ('guild-1', ?, ?, 'TOK cat', 1, 30, 5.0, 128, 128, 'alice')",
        (pet_id, checkpoint_id),
    )
    generation_id = cursor.lastrowid
    data.generation_dir(generation_id).mkdir(parents=True)
    (data.generation_dir(generation_id) / "0.png").write_bytes(b"png")
    await db.execute("UPDATE pets SET active_checkpoint_id = ? WHERE id = ?", (checkpoint_id, pet_id))
    return run_id, generation_id


async def test_forgetting_a_pet_removes_its_rows_and_folders_only(db, data, settings) -> None:
    thor = (await teach(db, data, settings, photos(1, 2), name="Thor")).pet
    loki = (await teach(db, data, settings, photos(3), name="Loki")).pet
    assert thor is not None and loki is not None
    thor_run, thor_generation = await add_run_with_outputs(db, data, thor.id)
    loki_run, loki_generation = await add_run_with_outputs(db, data, loki.id)

    footprint = await forget_pet(db, data, thor)
    assert (footprint.photos, footprint.runs, footprint.generations) == (2, 1, 1)
    assert await find_pet(db, "guild-1", "Thor") is None
    assert await table_counts(db) == {
        "pets": 1, "photos": 1, "training_runs": 1, "checkpoints": 1, "validation_images": 1, "generations": 1,
    }
    for gone in (data.pet_dir(thor.id), data.run_dir(thor_run), data.generation_dir(thor_generation)):
        assert not gone.exists()
    for kept in (data.pet_dir(loki.id), data.run_dir(loki_run), data.generation_dir(loki_generation)):
        assert kept.is_dir()
    [summary] = await pet_summaries(db, "guild-1")
    assert summary.name == "Loki" and summary.status == "trained (step 100)"


async def test_a_pet_in_training_is_not_deleted(db, data, settings) -> None:
    pet = (await teach(db, data, settings, photos(1))).pet
    assert pet is not None
    await add_run_with_outputs(db, data, pet.id, status="running")
    with pytest.raises(PetBusy, match="Thor is training right now; cancel the training first"):
        await forget_pet(db, data, pet)
    assert (await table_counts(db))["photos"] == 1 and data.photos_dir(pet.id).is_dir()


async def test_sweep_removes_old_leftovers_without_rows_and_nothing_else(db, data, settings) -> None:
    pet = (await teach(db, data, settings, photos(1))).pet
    assert pet is not None
    kept_files = files_under(data.pet_dir(pet.id))
    old = time.time() - 3600
    leftovers = [data.pet_dir(99), data.run_dir(77), data.generation_dir(55)]
    for folder in leftovers:
        folder.mkdir(parents=True)
        (folder / "file.bin").write_bytes(b"x")
    stray = data.photos_dir(pet.id) / "0123456789abcdef-deadbeef.jpg"  # written, but its row never committed
    stray.write_bytes(b"x")
    fresh = data.run_dir(78)  # another process may be about to commit its row
    fresh.mkdir(parents=True)
    not_ours = data.root / "pets" / "notes"
    not_ours.mkdir()
    for path in [*leftovers, stray]:
        os.utime(path, (old, old))

    removed = await sweep_orphans(db, data)
    assert set(removed) == {*leftovers, stray}
    assert not any(path.exists() for path in [*leftovers, stray])
    assert fresh.is_dir() and not_ours.is_dir()
    assert files_under(data.pet_dir(pet.id)) == kept_files


async def test_pets_of_one_guild_are_invisible_in_another(db, data, settings) -> None:
    await teach(db, data, settings, photos(1), name="Thor", guild="guild-1")
    assert await find_pet(db, "guild-2", "Thor") is None
    assert await list_pets(db, "guild-2") == []
    assert await pet_summaries(db, "guild-2") == []
    # The same name is free in another guild, and stays separate.
    other = (await teach(db, data, settings, photos(2), name="Thor", guild="guild-2")).pet
    assert other is not None and other.guild_id == "guild-2"
    [first] = await list_pets(db, "guild-1")
    assert first.id != other.id


@pytest.mark.parametrize("name", ["../../etc", "/etc/passwd", "..", "C:\\Windows", "thor/../../x", "~root"])
async def test_hostile_names_never_become_paths(db, data, settings, name: str) -> None:
    report = await teach(db, data, settings, [(f"../../{name}.jpg", samples.jpeg(1))], name=name)
    assert report.pet is not None and report.pet.name == name
    root = data.root.resolve()
    outside = {p for p in data.root.parent.iterdir()} - {data.root}
    assert outside == set()  # nothing written next to the data folder
    for path in data.root.rglob("*"):
        assert path.resolve().is_relative_to(root)
        parts = path.relative_to(data.root).parts
        assert parts[0] in ("pets", "pawtrait.db", "pawtrait.db-wal", "pawtrait.db-shm")
        if parts[0] == "pets" and len(parts) > 1:
            assert parts[1].isdigit()
    [row] = await list_photos(db, report.pet.id)
    assert row.original_name == f"{name.replace(chr(92), '/').rsplit('/', 1)[-1]}.jpg"
    assert ".." not in row.original_path and row.original_path.startswith(f"pets/{report.pet.id}/photos/")


async def test_status_follows_the_pets_trainings(db, data, settings) -> None:
    async with transaction(db):
        empty = await create_pet(db, "guild-1", "alice", "Empty", "dog")
    pet = (await teach(db, data, settings, photos(1), name="Thor")).pet
    assert pet is not None

    async def status_of(name: str) -> str:
        return {summary.name: summary.status for summary in await pet_summaries(db, "guild-1")}[name]

    assert await status_of("Empty") == "needs photos" and empty.class_noun == "dog"
    assert await status_of("Thor") == "ready to train"
    await db.execute("INSERT INTO training_runs (pet_id, status, params, total_steps) VALUES (?, 'queued', '{}', 500)", (pet.id,))
    assert await status_of("Thor") == "queued for training"
    await db.execute("UPDATE training_runs SET status = 'running', step = 120 WHERE pet_id = ?", (pet.id,))
    assert await status_of("Thor") == "training (step 120/500)"
    await db.execute("UPDATE training_runs SET status = 'succeeded', step = 500 WHERE pet_id = ?", (pet.id,))
    assert await status_of("Thor") == "trained (step 500)"
