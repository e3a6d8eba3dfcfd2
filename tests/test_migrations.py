"""Databases written by earlier releases upgrade in place, and the schema the migrations build is
the one storage/schema.py queries, on SQLite and on PostgreSQL.

tests/data/release-0.1.db was written by the last single-host release (commit 5e490ef) through
its own storage functions; tests/data/make_release_db.py says how. tests/data/release-0.1-sql/
holds that release's SQL migrations, to build its databases at their earlier versions.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import sqlite3
import subprocess
import sys
import threading
from importlib import resources
from pathlib import Path

import pytest
from sqlalchemy import inspect

from config.database_url import DatabaseUrl
from config.settings import Settings
from engine.usecases.jobs.registry import describe
from storage import jobs
from storage.db import Database, current_revision, open_database
from storage.discord_posts import get_discord_job, relay_position
from storage.generations import VariationSource, default_checkpoint, get_generation, record_generation
from storage.guild_settings import GuildSettings, get_guild_settings
from storage.pet_status import pet_summaries
from storage.pets import create_pet, delete_pet_row, find_pet, list_pets
from storage.photos import list_photos
from storage.runs import (
    RecordedChoice,
    add_checkpoint,
    get_run,
    insert_run,
    list_checkpoints,
    list_validation_images,
    vote_tally,
)
from storage.schema import jobs as job_rows
from storage.schema import metadata

from conftest import distributed

REPO = Path(__file__).resolve().parent.parent
RELEASE_DB = Path(__file__).resolve().parent / "data" / "release-0.1.db"
RELEASE_SQL = Path(__file__).resolve().parent / "data" / "release-0.1-sql"  # the release's own schema, V1-V4


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(resources.files("storage").joinpath("migrations")))
    return ScriptDirectory.from_config(config).get_current_head()


@pytest.fixture
def settings(tmp_path: Path, mode: str, request: pytest.FixtureRequest) -> Settings:
    """A fresh installation on a fresh database; migrations need no model."""
    local = Settings(data_dir=tmp_path / "data", vae=None, device="cpu", resolution=128)
    return distributed(local, request) if mode == "distributed" else local


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the release's own database ---------------------------------------------------------


async def test_a_database_written_by_the_release_upgrades_in_place_and_keeps_every_row(tmp_path: Path) -> None:
    path = tmp_path / "pawtrait.db"
    shutil.copyfile(RELEASE_DB, path)
    with sqlite3.connect(path) as old:
        assert old.execute("PRAGMA user_version").fetchone()[0] == 4
        token = old.execute("SELECT token FROM pets").fetchone()[0]
        old_events = old.execute("SELECT id, job_id, kind FROM job_events ORDER BY id").fetchall()
    assert len(old_events) == 12

    db = await open_database(DatabaseUrl.sqlite_file(path))
    try:
        assert await current_revision(db) == head_revision()

        [pet] = await list_pets(db, "guild-1")
        assert (pet.name, pet.owner_id, pet.class_noun, pet.token) == ("Thor", "alice", "cat", token)
        assert (await find_pet(db, "guild-1", "thor")).id == pet.id
        assert [p.original_name for p in await list_photos(db, pet.id)] == ["IMG_0.jpg", "IMG_1.jpg"]
        [summary] = await pet_summaries(db, "guild-1")
        assert summary.photos == 2 and summary.status == "trained (step 500)"

        run = await get_run(db, 1)
        assert run.pet_id == pet.id and run.status == "succeeded" and run.params == {"steps": 500, "rank": 16}
        assert run.step == run.total_steps == 500 and run.finished_at.endswith("Z")
        checkpoints = await list_checkpoints(db, run.id)
        assert [c.step for c in checkpoints] == [250, 500]
        assert run.chosen_checkpoint_id == checkpoints[1].id == pet.active_checkpoint_id
        assert run.choice == RecordedChoice(500, "it was kept when the training finished", {})  # never chosen again
        images = await list_validation_images(db, run.id)
        assert [(i.step, i.seed) for i in images] == [(250, 1), (250, 2), (500, 1), (500, 2)]
        assert await vote_tally(db, run.id) == {250: 1, 500: 3}
        assert await vote_tally(db, run.id, "🐾") == {250: 0, 500: 0}
        # The release kept a bare file name inside the checkpoint's folder: it still resolves.
        ref = await default_checkpoint(db, pet.id, pet.active_checkpoint_id)
        assert ref.key == "runs/1/checkpoints/step-500/pytorch_lora_weights.safetensors" and ref.step == 500

        generation = await get_generation(db, 1)
        assert generation.files == ["generations/1/0.png", "generations/1/1.png"]
        assert (generation.prompt, generation.negative_prompt, generation.seed) == (
            "a photo of TOK cat on a throne", "blurry", 1234,
        )
        assert (generation.lora_scale, generation.checkpoint_id, generation.source_generation_id) == (
            0.9, checkpoints[1].id, None,
        )

        listed = await jobs.list_jobs(db, active_only=False)
        assert [(j.id, j.kind, j.status) for j in listed] == [
            (3, "generate", "queued"), (4, "generate", "cancelled"), (2, "generate", "succeeded"),
            (1, "train", "succeeded"),
        ]
        by_id = {j.id: j for j in listed}
        assert by_id[1].run_id == run.id and by_id[1].result == {"run_id": run.id} and describe(by_id[1])
        assert by_id[2].generation_id == 1 and by_id[2].result["files"] == generation.files
        assert describe(by_id[3]) == "🎨 `Thor asleep`" and await jobs.queue_position(db, 3) == 1
        assert await jobs.average_duration_s(db, "generate") < 5

        events = await jobs.events_after(db, jobs.START)
        assert [(e.id, e.job_id, e.kind) for e in events] == old_events
        assert events[1].data == {"worker": "worker-a", "attempt": 1} and all(e.tx == 0 for e in events)
        assert await relay_position(db) == jobs.EventPosition(0, 12) == await jobs.last_event_position(db)
        discord = await get_discord_job(db, 1)
        assert (discord.channel_id, discord.thread_id, discord.status_message_id) == (
            "channel-9", "thread-3", "message-5",
        )
        assert discord.post_channel_id == "thread-3"
        assert await get_guild_settings(db, "guild-1") == GuildSettings(
            "guild-1", gallery_channel_id="gallery-7", vote_emoji="🐾", who_may_train="managers", max_steps=1500
        )

        # Life goes on: a new job's events come after the old ones, for the relay where it stopped.
        new = await jobs.submit_job(db, Settings(data_dir=tmp_path), "generate", "guild-1", "erin",
                                    {"request": {"prompt": "Thor again"}})
        fresh = await jobs.events_after(db, await relay_position(db))
        assert [(e.job_id, e.kind, e.data) for e in fresh] == [(new.id, "queued", {"position": 2})]
        assert fresh[0].position > events[-1].position and new.id == 5
        claimed = await jobs.claim_next_job(db, "worker-b")
        assert claimed.id == 3  # the release's waiting job still goes first
        await jobs.finish_job(db, claimed.lease, "succeeded", {"files": []})
        later = await create_pet(db, "guild-1", "alice", "Loki", "dog")
        assert later.id == 2 and later.created_at.endswith("Z") and len(later.created_at) == len(pet.created_at)
    finally:
        await db.close()

    # A second process opening it finds it up to date and changes nothing.
    upgraded = sha256(path)
    script = (
        "import asyncio, logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
        "from storage.db import current_revision, open_database\n"
        "async def main():\n"
        "    db = await open_database(sys.argv[1])\n"
        "    print('revision', await current_revision(db))\n"
        "    await db.close()\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, DatabaseUrl.sqlite_file(path).text], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"revision {head_revision()}"
    assert "upgraded" not in result.stdout + result.stderr
    assert sha256(path) == upgraded


def release_database(path: Path, version: int) -> None:
    """A database of an older release, at `PRAGMA user_version` `version`, with a pet and a job."""
    scripts = sorted(RELEASE_SQL.glob("V*.sql"))
    connection = sqlite3.connect(path)
    try:
        for script in scripts[:version]:
            connection.executescript(script.read_text(encoding="utf-8"))
        connection.execute(f"PRAGMA user_version = {version}")
        connection.execute(
            "INSERT INTO pets (guild_id, owner_id, name, token, class_noun) VALUES ('g', 'u', 'Thor', 'bcdfg', 'cat')"
        )
        connection.execute(
            "INSERT INTO photos (pet_id, sha256, phash, original_name, original_path, prepared_path, width, height, "
            "crop_left, crop_top, crop_size, added_by) VALUES (1, 'aa', '00', 'IMG_1.jpg', 'pets/1/photos/a.jpg', "
            "'pets/1/photos/a-crop.png', 640, 560, 40, 0, 560, 'u')"
        )
        if version >= 2:
            connection.execute(
                "INSERT INTO jobs (kind, guild_id, user_id, payload) VALUES ('generate', 'g', 'u', '{\"request\": {}}')"
            )
            connection.execute("INSERT INTO job_events (job_id, kind, data) VALUES (1, 'queued', '{\"position\": 1}')")
        connection.commit()
    finally:
        connection.close()


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_an_older_release_database_upgrades_to_the_latest_revision(tmp_path: Path, version: int) -> None:
    path = tmp_path / "old.db"
    release_database(path, version)
    db = await open_database(DatabaseUrl.sqlite_file(path))
    try:
        assert await current_revision(db) == head_revision()
        pet = await find_pet(db, "g", "thor")
        assert pet is not None and pet.token == "bcdfg" and pet.created_at.endswith("Z")
        [photo] = await list_photos(db, pet.id)
        assert photo.original_name == "IMG_1.jpg" and photo.crop_size == 560
        if version >= 2:
            [event] = await jobs.events_after(db, jobs.START)
            assert (event.job_id, event.kind, event.data, event.tx) == (1, "queued", {"position": 1}, 0)
            assert (await jobs.get_job(db, 1)).status == "queued"
        # What later migrations added works: per-guild settings, the relay, variations, the queue.
        assert await get_guild_settings(db, "g") == GuildSettings("g")
        assert await relay_position(db) is None
        first = await record_generation(
            db, ["generations/a/0.png"], guild_id="g", pet_id=pet.id, checkpoint_id=None, prompt="p",
            negative_prompt="", seed=1, steps=1, guidance=1.0, width=64, height=64, lora_scale=1.0, requested_by="u",
        )
        variation = await record_generation(
            db, ["generations/b/0.png"], guild_id="g", pet_id=pet.id, checkpoint_id=None, prompt="p",
            negative_prompt="", seed=2, steps=1, guidance=1.0, width=64, height=64, lora_scale=1.0, requested_by="u",
            variation=VariationSource(first.id, 1, 0.5),
        )
        assert (variation.source_generation_id, variation.source_image, variation.variation_strength) == (
            first.id, 1, 0.5,
        )
        job = await jobs.submit_job(db, Settings(data_dir=tmp_path), "train", "g", "u", {})
        assert job.status == "queued"
        assert (await jobs.events_after(db, jobs.START))[-1].job_id == job.id
    finally:
        await db.close()
    with sqlite3.connect(path) as upgraded:
        assert upgraded.execute("PRAGMA user_version").fetchone()[0] == 4


# --- what the migrations build ------------------------------------------------------------


def _type_name(type_, dialect) -> str:
    """A column type as the database knows it: SQLite by affinity, PostgreSQL by its own name."""
    name = type_.compile(dialect=dialect).upper()
    if dialect.name == "sqlite":
        if "INT" in name:
            return "INTEGER"
        if any(word in name for word in ("CHAR", "CLOB", "TEXT")):
            return "TEXT"
        if any(word in name for word in ("REAL", "FLOA", "DOUB")):
            return "REAL"
        return "NUMERIC"
    return {"FLOAT": "DOUBLE PRECISION", "VARCHAR": "TEXT"}.get(name, name)


def _reflect(connection) -> dict:
    inspector = inspect(connection)
    found = {}
    for table in inspector.get_table_names():
        if table == "alembic_version":
            continue
        found[table] = {
            "columns": {
                column["name"]: (_type_name(column["type"], connection.dialect), bool(column["nullable"]))
                for column in inspector.get_columns(table)
            },
            "primary key": set(inspector.get_pk_constraint(table)["constrained_columns"]),
            "foreign keys": {
                (tuple(fk["constrained_columns"]), fk["referred_table"], tuple(fk["referred_columns"]))
                for fk in inspector.get_foreign_keys(table)
            },
            "unique": {tuple(unique["column_names"]) for unique in inspector.get_unique_constraints(table)}
            | {tuple(index["column_names"]) for index in inspector.get_indexes(table) if index["unique"]},
        }
    return found


@pytest.mark.both_modes
async def test_the_migrations_build_the_schema_the_queries_are_written_against(db: Database) -> None:
    async with db.engine.connect() as connection:
        found = await connection.run_sync(_reflect)
        dialect = connection.dialect
    expected = {
        table.name: {
            "columns": {
                # SQLite reports an INTEGER PRIMARY KEY (the rowid) as nullable; it never is.
                column.name: (_type_name(column.type, dialect), column.nullable and not column.primary_key)
                for column in table.columns
            },
            "primary key": {column.name for column in table.primary_key},
            "foreign keys": {
                ((fk.parent.name,), fk.column.table.name, (fk.column.name,)) for fk in table.foreign_keys
            },
        }
        for table in metadata.sorted_tables
    }
    if dialect.name == "sqlite":
        for table in found.values():
            table["columns"] = {
                name: (kind, nullable and name not in table["primary key"])
                for name, (kind, nullable) in table["columns"].items()
            }
    unique = {name: table.pop("unique") for name, table in found.items()}
    assert sorted(found) == sorted(expected)
    for name in expected:
        assert found[name] == expected[name], name
    # What the queries rely on being unique is: unique=True columns, and ON CONFLICT targets
    # that are no primary key (add_checkpoint's).
    for table in metadata.sorted_tables:
        for column in table.columns:
            if column.unique:
                assert (column.name,) in unique[table.name], f"{table.name}.{column.name}"
    assert ("run_id", "step") in unique["checkpoints"]


@pytest.mark.both_modes
async def test_processes_opening_a_new_database_at_once_migrate_it_once(settings: Settings) -> None:
    opened = await asyncio.wait_for(asyncio.gather(*(open_database(settings.database_url) for _ in range(3))), 60)
    try:
        assert [await current_revision(db) for db in opened] == [head_revision()] * 3
        await create_pet(opened[0], "g", "u", "Thor", "cat")
        assert [len(await list_pets(db, "g")) for db in opened] == [1, 1, 1]
    finally:
        for db in opened:
            await db.close()


async def test_a_new_database_file_opened_while_another_process_writes_to_it_waits(tmp_path: Path) -> None:
    path = tmp_path / "pawtrait.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process is writing (the file is still in rollback mode)
    other.execute("CREATE TABLE notes (x)")
    commit = threading.Timer(0.5, other.execute, ["COMMIT"])  # as the other process would, on its own
    commit.start()
    try:
        db = await asyncio.wait_for(open_database(DatabaseUrl.sqlite_file(path)), 30)
        try:
            assert await current_revision(db) == head_revision()
        finally:
            await db.close()
    finally:
        commit.join()
        other.close()


# --- ids ------------------------------------------------------------------------------------

AUTOINCREMENTED = ("pets", "photos", "training_runs", "checkpoints", "generations", "jobs", "job_events")


def _schema_and_rows(path: Path) -> tuple[dict, dict]:
    """Every table's rows and every index's columns, as the file holds them."""
    with sqlite3.connect(path) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {
            table: sorted(connection.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
            for table in tables if table not in ("alembic_version", "sqlite_sequence")
        }
        indexes = {
            row[0]: (row[1], [info[2] for info in connection.execute(f'PRAGMA index_info("{row[0]}")')])
            for row in connection.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'")
        }
        keys = {table: sorted(connection.execute(f'PRAGMA foreign_key_list("{table}")').fetchall()) for table in rows}
    return rows, {"indexes": indexes, "foreign keys": keys}


async def test_the_release_database_keeps_every_row_index_and_key_and_never_hands_out_an_id_twice(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pawtrait.db"
    shutil.copyfile(RELEASE_DB, path)
    rows_before, shape_before = _schema_and_rows(path)
    db = await open_database(DatabaseUrl.sqlite_file(path))
    await db.close()
    rows_after, shape = _schema_and_rows(path)
    for table, rows in rows_before.items():
        assert [row[: len(rows[0])] for row in rows_after[table]] == rows, table  # later columns appended
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for table in AUTOINCREMENTED:
            sql = connection.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
            assert "AUTOINCREMENT" in sql, table
    # What the release built besides is still there: its indexes and foreign keys, with 0002's and 0003's.
    assert {table: keys for table, keys in shape["foreign keys"].items() if table in shape_before["foreign keys"]} == (
        shape_before["foreign keys"]
    )
    assert {name: index for name, index in shape["indexes"].items() if name in shape_before["indexes"]} == (
        shape_before["indexes"]
    )
    assert shape["indexes"]["job_events_order"] == ("job_events", ["tx", "id"])

    # Forgetting the newest pet takes its rows (the training's job and events with them); what
    # comes next gets new ids, and the events come after the relay's position.
    db = await open_database(DatabaseUrl.sqlite_file(path))
    try:
        [pet] = await list_pets(db, "guild-1")
        [run_id] = [job.run_id for job in await jobs.list_jobs(db, active_only=False) if job.run_id is not None]
        checkpoint_ids = [checkpoint.id for checkpoint in await list_checkpoints(db, run_id)]
        async with db.transaction() as tx:
            await tx.execute(job_rows.delete().where(job_rows.c.id >= 1))  # as the release's newest events went
            await delete_pet_row(tx, pet.id)
        assert await jobs.events_after(db, jobs.START) == [] and await list_pets(db, "guild-1") == []
        again = await create_pet(db, "guild-1", "alice", "Loki", "dog")
        job = await jobs.submit_job(db, Settings(data_dir=tmp_path), "generate", "guild-1", "erin", {"request": {}})
        assert again.id > pet.id and job.id > 4
        [event] = await jobs.events_after(db, await relay_position(db))
        assert event.job_id == job.id
        run = await insert_run(db, again.id, {"steps": 1}, 1)
        assert run > run_id and await add_checkpoint(db, run, 1, "runs/x", "a", "b") > max(checkpoint_ids)
    finally:
        await db.close()


@pytest.mark.both_modes
async def test_deleting_the_newest_row_never_gives_its_id_to_the_next_one(db: Database, tmp_path: Path) -> None:
    first = await create_pet(db, "g", "u", "Thor", "cat")
    await delete_pet_row(db, first.id)
    second = await create_pet(db, "g", "u", "Loki", "cat")
    assert second.id > first.id
    job = await jobs.submit_job(db, Settings(data_dir=tmp_path), "generate", "g", "u", {"request": {}})
    [event] = await jobs.events_after(db, jobs.START)
    async with db.transaction() as tx:
        await tx.execute(job_rows.delete().where(job_rows.c.id == job.id))  # its events go with it
    later = await jobs.submit_job(db, Settings(data_dir=tmp_path), "generate", "g", "u", {"request": {}})
    [again] = await jobs.events_after(db, event.position)
    assert later.id > job.id and again.job_id == later.id and again.id > event.id
