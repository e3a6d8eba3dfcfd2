"""Storage on a real SQLite file and folder, and on a real PostgreSQL and S3 bucket: all-or-nothing
photo adds, deletion, sweeping, isolation between guilds, pet status, and riding out a
PostgreSQL restart. (Upgrading older databases: test_migrations.py.)"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import IntegrityError

import engine.usecases.teach
from config.settings import Settings
from engine.usecases.teach import TeachError, teach_photos
from storage import jobs, keys, leases, retention, workers
from storage.db import Database, open_database
from storage.dialects import utc_now_minus
from storage.discord_posts import add_discord_job, get_discord_job, relay_position, set_relay_position
from storage.files import FileStore, LocalFiles
from storage.generations import get_generation, record_generation
from storage.guild_settings import get_guild_settings, others_may_imagine, set_others_may_imagine, update_guild_settings
from storage.pet_deletion import PetBusy, delete_pet_without_photos, forget_pet, pet_footprint, sweep_orphans
from storage.pet_status import pet_summaries
from storage.pets import PetNameTaken, create_pet, find_pet, list_pets, set_active_checkpoint
from storage.photos import insert_photo, list_photos
from storage.runs import (
    add_checkpoint,
    add_validation_image,
    add_vote,
    finish_run,
    get_run,
    insert_run,
    list_checkpoints,
    mark_running,
    remove_vote,
    set_step,
    vote_tally,
)
from storage.schema import (
    checkpoints,
    generations,
    job_events,
    pets,
    photos,
    training_runs,
    validation_images,
)
from storage.schema import leases as leases_table
from storage.schema import workers as workers_table

import photo_samples as samples
from conftest import distributed

pytestmark = pytest.mark.both_modes

TABLES = {
    "pets": pets, "photos": photos, "training_runs": training_runs, "checkpoints": checkpoints,
    "validation_images": validation_images, "generations": generations,
}


@pytest.fixture
def settings(tmp_path: Path, mode: str, request: pytest.FixtureRequest) -> Settings:
    """A fresh installation (SQLite + data folder, or PostgreSQL + a bucket); storage needs no model."""
    local = Settings(data_dir=tmp_path / "data", vae=None, device="cpu", resolution=128)
    return distributed(local, request) if mode == "distributed" else local


def photos_of(*seeds: int) -> list[tuple[str, bytes]]:
    return [(f"IMG_{seed}.jpg", samples.jpeg(seed)) for seed in seeds]


async def teach(db, store: FileStore, settings: Settings, files, name: str = "Thor", guild: str = "guild-1"):
    return await teach_photos(db, store, settings, guild, "alice", name, "cat", files, added_by="alice")


async def stored(store: FileStore, prefix: str = "") -> set[str]:
    """The keys in the store (a data folder also holds the SQLite database, which is no file of the store's)."""
    return {item.key for item in await store.list(prefix) if not item.key.startswith("pawtrait.db")}


async def table_counts(db: Database) -> dict[str, int]:
    return {name: await db.scalar(select(func.count()).select_from(table)) for name, table in TABLES.items()}


# --- the database itself ----------------------------------------------------------------


async def test_foreign_keys_are_enforced(db: Database) -> None:
    if db.dialect == "sqlite":
        assert await db.scalar(text("PRAGMA journal_mode")) == "wal"  # readers never wait for writers
        assert await db.scalar(text("PRAGMA foreign_keys")) == 1
    with pytest.raises(IntegrityError):
        await insert_photo(
            db, 999, sha256="a", phash="0", original_name="x", original_path="x", prepared_path="x", width=1,
            height=1, crop=(0, 0, 1), added_by="u",
        )
    assert (await table_counts(db))["photos"] == 0


async def test_a_failed_transaction_leaves_nothing_and_the_database_keeps_working(db: Database) -> None:
    with pytest.raises(PetNameTaken):
        async with db.transaction() as tx:
            await create_pet(tx, "guild-1", "alice", "Thor", "cat")
            await create_pet(tx, "guild-1", "bob", "THOR", "dog")  # names are unique per guild, any case
    assert await list_pets(db, "guild-1") == []
    async with db.transaction() as tx:  # a savepoint lets a transaction carry on after a refused insert
        thor = await create_pet(tx, "guild-1", "alice", "Thor", "cat")
        with pytest.raises(PetNameTaken, match="A pet called 'thor' already exists"):
            await create_pet(tx, "guild-1", "bob", "thor", "dog")
        loki = await create_pet(tx, "guild-1", "bob", "Loki", "dog")
    assert {pet.id for pet in await list_pets(db, "guild-1")} == {thor.id, loki.id}
    assert (await find_pet(db, "guild-1", "  tHoR ")).id == thor.id
    assert thor.token != loki.token and thor.token.isalpha() and len(thor.token) == 5
    assert thor.instance_prompt == f"a photo of {thor.token} cat"


# --- all-or-nothing photo adds ----------------------------------------------------------


def fail_on_call(number: int, real):
    calls = {"n": 0}

    async def writer(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == number:
            raise OSError(28, "No space left on device")
        return await real(*args, **kwargs)

    return writer


async def test_a_write_failing_half_way_leaves_no_new_pet_no_rows_no_files(db, store, settings, monkeypatch) -> None:
    # The third file write fails as a full disk (or a refused upload) would.
    monkeypatch.setattr(store, "put_bytes", fail_on_call(3, store.put_bytes))
    with pytest.raises(OSError, match="No space left"):
        await teach(db, store, settings, photos_of(1, 2, 3))
    assert await find_pet(db, "guild-1", "Thor") is None
    assert (await table_counts(db))["photos"] == 0
    assert await stored(store, "pets") == set()


async def test_a_failure_while_adding_to_a_pet_keeps_exactly_what_it_had(db, store, settings, monkeypatch) -> None:
    report = await teach(db, store, settings, photos_of(1, 2))
    assert report.pet is not None and report.accepted == 2
    before_rows = await list_photos(db, report.pet.id)
    before_files = await stored(store, keys.pet_prefix(report.pet.id))

    # The database refuses the second new row (after its files were written): a real constraint
    # violation, its photo pointing at a pet that does not exist.
    real_insert = engine.usecases.teach.insert_photo
    calls = {"n": 0}

    async def second_row_refused(db, pet_id, **kwargs):
        calls["n"] += 1
        return await real_insert(db, 987654 if calls["n"] == 2 else pet_id, **kwargs)

    monkeypatch.setattr(engine.usecases.teach, "insert_photo", second_row_refused)
    with pytest.raises(TeachError):
        await teach(db, store, settings, photos_of(3, 4, 5))
    assert await list_photos(db, report.pet.id) == before_rows
    assert await stored(store, keys.pet_prefix(report.pet.id)) == before_files
    for row in before_rows:  # every row still points at a file
        assert await store.exists(row.original_path) and await store.exists(row.prepared_path)


# --- deleting a pet, sweeping leftovers -------------------------------------------------


async def add_run_with_outputs(
    db: Database, store: FileStore, pet_id: int, status: str = "succeeded"
) -> tuple[int, int]:
    """A training run with a checkpoint, a validation image and a generation, as the trainer would leave them."""
    run_id = await insert_run(db, pet_id, {"steps": 500}, total_steps=500)
    await mark_running(db, run_id, 0)
    await set_step(db, run_id, 100)
    folder = keys.checkpoint(run_id, 100, keys.new_tag())
    await store.put_bytes(f"{folder}/pytorch_lora_weights.safetensors", b"lora")
    await store.put_bytes(f"{folder}/kohya.safetensors", b"lora")
    checkpoint_id = await add_checkpoint(
        db, run_id, 100, folder, "pytorch_lora_weights.safetensors", "kohya.safetensors"
    )
    image = keys.validation_image(run_id, 100, 0, keys.new_tag())
    await store.put_bytes(image, b"png")
    image_id = await add_validation_image(db, run_id, 100, checkpoint_id, "a photo of TOK cat", 1, image)
    assert await add_vote(db, "bob", "⭐", validation_image_id=image_id)
    picture = f"{keys.generation_folder(keys.new_tag())}/0.png"
    await store.put_bytes(picture, b"png")
    generation = await record_generation(
        db, [picture], guild_id="guild-1", pet_id=pet_id, checkpoint_id=checkpoint_id, prompt="TOK cat",
        negative_prompt="", seed=1, steps=30, guidance=5.0, width=128, height=128, lora_scale=1.0, requested_by="alice",
    )
    await set_active_checkpoint(db, pet_id, checkpoint_id)
    if status != "running":
        await finish_run(db, run_id, status, 100)
    return run_id, generation.id


async def test_forgetting_a_pet_removes_its_rows_and_files_only(db, store, settings) -> None:
    thor = (await teach(db, store, settings, photos_of(1, 2), name="Thor")).pet
    loki = (await teach(db, store, settings, photos_of(3), name="Loki")).pet
    assert thor is not None and loki is not None
    thor_run, thor_generation = await add_run_with_outputs(db, store, thor.id)
    loki_run, loki_generation = await add_run_with_outputs(db, store, loki.id)
    thor_pictures = (await get_generation(db, thor_generation)).files
    loki_pictures = (await get_generation(db, loki_generation)).files
    assert await vote_tally(db, thor_run) == {100: 1}

    assert await pet_footprint(db, thor.id) == (await forget_pet(db, store, thor))
    assert (await pet_footprint(db, thor.id)).photos == 0
    assert await find_pet(db, "guild-1", "Thor") is None
    assert await table_counts(db) == {
        "pets": 1, "photos": 1, "training_runs": 1, "checkpoints": 1, "validation_images": 1, "generations": 1,
    }
    assert await get_run(db, thor_run) is None and await get_generation(db, thor_generation) is None
    assert await stored(store, keys.pet_prefix(thor.id)) == set()
    assert await stored(store, keys.run_prefix(thor_run)) == set()
    assert not any([await store.exists(key) for key in thor_pictures])
    assert await stored(store, keys.pet_prefix(loki.id)) and await stored(store, keys.run_prefix(loki_run))
    assert all([await store.exists(key) for key in loki_pictures])
    [summary] = await pet_summaries(db, "guild-1")
    assert summary.name == "Loki" and summary.status == "trained (step 100)"


async def test_forgetting_a_pet_reports_what_it_removed(db, store, settings) -> None:
    thor = (await teach(db, store, settings, photos_of(1, 2), name="Thor")).pet
    await add_run_with_outputs(db, store, thor.id)
    footprint = await forget_pet(db, store, thor)
    assert (footprint.photos, footprint.runs, footprint.generations) == (2, 1, 1)


async def test_a_new_pet_with_a_photo_being_added_is_not_deleted(db, settings) -> None:
    """A failed /teach takes away the pet it created only if it has no photo, also while another
    /teach is committing one: the check waits for that transaction and then sees the photo."""
    pet = await create_pet(db, "g1", "alice", "Thor", "cat")
    other = await open_database(settings.database_url)  # the concurrent /teach (another process)
    adding = other.transaction()
    try:
        tx = await adding.__aenter__()
        await insert_photo(
            tx, pet.id, sha256="a", phash="0", original_name="IMG_1.jpg", original_path="x", prepared_path="y",
            width=1, height=1, crop=(0, 0, 1), added_by="alice",
        )
        deleting = asyncio.create_task(delete_pet_without_photos(db, pet.id))
        await asyncio.sleep(0.5)
        assert not deleting.done()  # it waits for the photo's transaction
        await adding.__aexit__(None, None, None)
        assert await deleting is False
    finally:
        await other.close()
    assert [photo.original_name for photo in await list_photos(db, pet.id)] == ["IMG_1.jpg"]
    assert not await delete_pet_without_photos(db, pet.id) and await find_pet(db, "g1", "Thor") is not None


async def test_a_pet_in_training_is_not_deleted(db, store, settings) -> None:
    pet = (await teach(db, store, settings, photos_of(1))).pet
    assert pet is not None
    await add_run_with_outputs(db, store, pet.id, status="running")
    before = await stored(store)
    with pytest.raises(PetBusy, match="Thor is training right now; cancel the training first"):
        await forget_pet(db, store, pet)
    assert (await table_counts(db))["photos"] == 1 and await find_pet(db, "guild-1", "Thor") is not None
    assert await stored(store) == before


async def test_sweep_removes_old_leftovers_without_rows_and_nothing_else(db, store, settings) -> None:
    pet = (await teach(db, store, settings, photos_of(1))).pet
    assert pet is not None
    run_id, generation_id = await add_run_with_outputs(db, store, pet.id)
    kept = await stored(store)  # photos, the contact sheet, checkpoint files, validation image, pictures
    leftovers = [
        "pets/99/photos/a.jpg", "runs/77/checkpoints/step-5-0000/pytorch_lora_weights.safetensors",
        f"{keys.generation_folder('deadbeef')}/0.png", keys.validation_image(run_id, 200, 0, "cafe0000"),
        keys.photo(pet.id, "0123456789abcdef-deadbeef.jpg"),  # written, but its row never committed
    ]
    not_swept = [keys.class_image("cat", 0)]  # not indexed by rows: never swept
    for key in leftovers + not_swept:
        await store.put_bytes(key, b"x")
    if isinstance(store, LocalFiles):
        old = time.time() - 3600
        for key in await stored(store):
            os.utime(store.path(key), (old, old))
        written_before = time.time()
    else:  # an S3 object's time cannot be set: let the leftovers age instead (times are whole seconds)
        written_before = time.time()
        await asyncio.sleep(1.5)
    fresh = "runs/78/checkpoints/step-5-0000/pytorch_lora_weights.safetensors"  # its row may commit any moment
    await store.put_bytes(fresh, b"x")
    min_age_s = 600.0 if isinstance(store, LocalFiles) else time.time() - written_before - 0.1

    removed = await sweep_orphans(db, store, min_age_s=min_age_s)
    assert sorted(removed) == sorted(leftovers)
    assert await stored(store) == kept | set(not_swept) | {fresh}
    assert await sweep_orphans(db, store, min_age_s=min_age_s) == []
    assert (await get_generation(db, generation_id)).files[0] in kept


# --- guilds, hostile input, status ------------------------------------------------------


async def test_pets_of_one_guild_are_invisible_in_another(db, store, settings) -> None:
    await teach(db, store, settings, photos_of(1), name="Thor", guild="guild-1")
    assert await find_pet(db, "guild-2", "Thor") is None
    assert await list_pets(db, "guild-2") == []
    assert await pet_summaries(db, "guild-2") == []
    # The same name is free in another guild, and stays separate.
    other = (await teach(db, store, settings, photos_of(2), name="Thor", guild="guild-2")).pet
    assert other is not None and other.guild_id == "guild-2"
    [first] = await list_pets(db, "guild-1")
    assert first.id != other.id
    assert [p.name for p in await list_pets(db, "guild-1", owner_id="bob")] == []


@pytest.mark.parametrize("name", ["../../etc", "/etc/passwd", "..", "C:\\Windows", "thor/../../x", "~root"])
async def test_hostile_names_never_become_paths(db, store, settings, name: str) -> None:
    report = await teach(db, store, settings, [(f"../../{name}.jpg", samples.jpeg(1))], name=name)
    assert report.pet is not None and report.pet.name == name
    for key in await stored(store):
        parts = key.split("/")
        assert parts[0] == "pets" and parts[1] == str(report.pet.id) and ".." not in parts, key
    # Nothing on this host outside the data folder either (files, or an S3 store's local copies).
    root = settings.data_dir.resolve()
    assert {p for p in settings.data_dir.parent.iterdir()} == {settings.data_dir}
    for path in settings.data_dir.rglob("*"):
        assert path.resolve().is_relative_to(root)
        parts = path.relative_to(settings.data_dir).parts
        assert parts[0] in ("pets", "cache", "pawtrait.db", "pawtrait.db-wal", "pawtrait.db-shm"), path
    [row] = await list_photos(db, report.pet.id)
    assert row.original_name == f"{name.replace(chr(92), '/').rsplit('/', 1)[-1]}.jpg"
    assert ".." not in row.original_path and row.original_path.startswith(f"pets/{report.pet.id}/photos/")


async def test_status_follows_the_pets_trainings(db, store, settings) -> None:
    async with db.transaction() as tx:
        empty = await create_pet(tx, "guild-1", "alice", "Empty", "dog")
    pet = (await teach(db, store, settings, photos_of(1), name="Thor")).pet
    assert pet is not None

    async def status_of(name: str) -> str:
        return {summary.name: summary.status for summary in await pet_summaries(db, "guild-1")}[name]

    assert await status_of("Empty") == "needs photos" and empty.class_noun == "dog"
    assert await status_of("Thor") == "ready to train"
    run_id = await insert_run(db, pet.id, {}, total_steps=500)
    assert await status_of("Thor") == "queued for training"
    await mark_running(db, run_id, 0)
    await set_step(db, run_id, 120)
    assert await status_of("Thor") == "training (step 120/500)"
    await finish_run(db, run_id, "succeeded", 500)
    assert await status_of("Thor") == "trained (step 500)"
    run = await get_run(db, run_id)
    assert run.started_at is not None and run.finished_at is not None and run.started_at <= run.finished_at


async def test_times_read_back_as_utc_text_on_both_databases(db) -> None:
    pet = await create_pet(db, "guild-1", "alice", "Thor", "cat")
    assert pet.created_at.endswith("Z") and pet.created_at[10] == "T" and len(pet.created_at) == 24
    # The database's clock: a pet made now sorts after one written with an older time.
    await db.execute(insert(pets).values(guild_id="guild-1", owner_id="bob", name="Old", token="bbbbb",
                                         class_noun="dog", created_at="2020-01-01T00:00:00.000Z"))
    assert [p.name for p in await list_pets(db, "guild-1")] == ["Thor", "Old"]
    assert (await find_pet(db, "guild-1", "old")).created_at == "2020-01-01T00:00:00.000Z"


# --- PostgreSQL going away --------------------------------------------------------------


async def test_a_database_rides_out_a_postgresql_restart(mode: str, settings: Settings, request) -> None:
    if mode == "embedded":
        pytest.skip("a SQLite file has no server to restart")
    server = request.getfixturevalue("postgres_server")
    db = await open_database(settings.database_url)
    other = await open_database(settings.database_url)
    try:
        pet = await create_pet(db, "guild-1", "alice", "Thor", "cat")
        async with other.transaction() as tx:  # a pooled connection that will die with the server
            await tx.scalar(select(1))

        await asyncio.to_thread(server.restart)
        assert (await find_pet(db, "guild-1", "Thor")).id == pet.id  # the old pooled connection is replaced
        async with other.transaction() as tx:  # a transaction started after the restart works
            loki = await create_pet(tx, "guild-1", "bob", "Loki", "dog")
        assert {p.name for p in await list_pets(db, "guild-1")} == {"Thor", "Loki"}

        # While the server is down statements and a worker's writes wait and retry, then carry on.
        job = await jobs.submit_job(db, settings, "generate", "guild-1", "alice", {"request": {"prompt": "p"}})
        lease = (await jobs.claim_next_job(other, "w1")).lease
        await asyncio.to_thread(server.stop)
        reading = asyncio.create_task(find_pet(db, "guild-1", "Loki"))
        writing = asyncio.create_task(jobs.set_progress(other, lease, 0.5, "step 2/4", {"step": 2, "total": 4}))
        await asyncio.sleep(1.5)
        assert not reading.done() and not writing.done()
        await asyncio.to_thread(server.start)
        assert (await asyncio.wait_for(reading, 30)).id == loki.id
        await asyncio.wait_for(writing, 30)
        events = await jobs.events_after(db, jobs.START, [job.id])
        assert [e.kind for e in events] == ["queued", "started", "progress"]  # written once
        assert (await jobs.get_job(db, job.id)).progress_text == "step 2/4"
        async with other.transaction() as tx:
            await create_pet(tx, "guild-1", "carol", "Fido", "dog")
        assert len(await list_pets(db, "guild-1")) == 3
    finally:
        await db.close()
        await other.close()


# --- upserts, named leases, the worker registry, retention --------------------------------


async def test_writing_the_same_thing_twice_updates_it_in_place(db) -> None:
    pet = await create_pet(db, "guild-1", "alice", "Thor", "cat")
    run_id = await insert_run(db, pet.id, {}, 10)
    first = await add_checkpoint(db, run_id, 5, "runs/1/checkpoints/step-5-a", "a/x.safetensors", "a/y.safetensors")
    again = await add_checkpoint(db, run_id, 5, "runs/1/checkpoints/step-5-b", "b/x.safetensors", "b/y.safetensors")
    [checkpoint] = await list_checkpoints(db, run_id)
    assert first == again == checkpoint.id and checkpoint.path.endswith("step-5-b")
    assert await add_vote(db, "bob", "⭐", checkpoint_id=checkpoint.id)
    assert not await add_vote(db, "bob", "⭐", checkpoint_id=checkpoint.id)  # once per member and emoji
    assert await add_vote(db, "bob", "🐾", checkpoint_id=checkpoint.id)
    assert await vote_tally(db, run_id) == {5: 2} and await vote_tally(db, run_id, "⭐") == {5: 1}
    assert await remove_vote(db, "bob", "⭐", checkpoint_id=checkpoint.id)
    assert not await remove_vote(db, "bob", "⭐", checkpoint_id=checkpoint.id)

    job = await jobs.submit_job(db, Settings(), "generate", "guild-1", "alice", {"request": {"prompt": "p"}})
    await add_discord_job(db, job.id, "guild-1", "channel-1", "alice")
    await add_discord_job(db, job.id, "guild-1", "channel-2", "alice", thread_id="thread-1")
    assert (await get_discord_job(db, job.id)).post_channel_id == "thread-1"
    assert await relay_position(db) is None
    await set_relay_position(db, jobs.EventPosition(7, 41))
    await set_relay_position(db, jobs.EventPosition(9, 40))
    assert await relay_position(db) == jobs.EventPosition(9, 40)
    await update_guild_settings(db, "guild-1", gallery_channel_id="55")
    changed = await update_guild_settings(db, "guild-1", who_may_train="managers")
    assert (changed.gallery_channel_id, changed.who_may_train, changed.vote_emoji) == ("55", "managers", "⭐")
    assert await get_guild_settings(db, "guild-1") == changed
    assert await others_may_imagine(db, pet.id)
    await set_others_may_imagine(db, pet.id, False)
    await set_others_may_imagine(db, pet.id, False)
    assert not await others_may_imagine(db, pet.id)


async def test_a_named_lease_has_one_holder_until_it_expires_on_the_database_clock(db) -> None:
    assert await leases.try_acquire(db, "class-images:cat", "host-a", 30)
    assert not await leases.try_acquire(db, "class-images:cat", "host-b", 30)
    assert await leases.try_acquire(db, "class-images:dog", "host-b", 30)  # another name is free
    assert await leases.renew(db, "class-images:cat", "host-a", 30)
    assert await leases.try_acquire(db, "class-images:cat", "host-a", 30)  # taking it again renews it

    # host-a dies: a minute later (on the database's clock) its lease has expired.
    await db.execute(leases_table.update().where(leases_table.c.name == "class-images:cat")
                     .values(expires_at=utc_now_minus(60)))
    assert await leases.try_acquire(db, "class-images:cat", "host-b", 30)
    assert not await leases.renew(db, "class-images:cat", "host-a", 30)
    await leases.release(db, "class-images:cat", "host-a")  # not its own any more: nothing happens
    assert not await leases.try_acquire(db, "class-images:cat", "host-c", 30)
    await leases.release(db, "class-images:cat", "host-b")
    assert await leases.try_acquire(db, "class-images:cat", "host-c", 30)


async def test_the_worker_registry_tells_live_and_idle_workers_by_the_database_clock(db) -> None:
    await workers.register(db, "host-a:0", "host-a", "cuda:0")
    await workers.register(db, "host-b:0", "host-b", "cuda:0")
    await workers.set_state(db, "host-a:0", "idle")
    await workers.set_state(db, "host-b:0", "busy", job_id=7)
    assert await workers.idle_others(db, "host-b:0", fresh_s=10) == 1
    assert await workers.idle_others(db, "host-a:0", fresh_s=10) == 0
    live = {worker.id: worker for worker in await workers.live(db, fresh_s=10)}
    assert set(live) == {"host-a:0", "host-b:0"} and live["host-b:0"].job_id == 7 and live["host-b:0"].state == "busy"
    with pytest.raises(ValueError, match="unknown worker state"):
        await workers.set_state(db, "host-a:0", "sleeping")

    # host-a goes silent: after a minute it no longer counts, and the prune forgets it.
    await db.execute(workers_table.update().where(workers_table.c.id == "host-a:0")
                     .values(heartbeat_at=utc_now_minus(60)))
    await workers.beat(db, "host-b:0")
    assert [worker.id for worker in await workers.live(db, fresh_s=10)] == ["host-b:0"]
    assert await workers.idle_others(db, "host-b:0", fresh_s=10) == 0
    assert await workers.prune(db, silent_s=30) == 1
    await workers.register(db, "host-b:0", "host-b", "cuda:0")  # a restart of the same worker
    assert [(w.id, w.state) for w in await workers.live(db, fresh_s=10)] == [("host-b:0", "starting")]
    await workers.forget(db, "host-b:0")
    assert await workers.live(db, fresh_s=10) == []


async def test_retention_finds_old_generations_and_old_events_of_ended_jobs(db) -> None:
    pet = await create_pet(db, "guild-1", "alice", "Thor", "cat")
    pictures = []
    for age_days in (10, 1):
        generation = await record_generation(
            db, [f"generations/{age_days}/0.png"], guild_id="guild-1", pet_id=pet.id, checkpoint_id=None,
            prompt="p", negative_prompt="", seed=1, steps=1, guidance=1.0, width=64, height=64, lora_scale=1.0,
            requested_by="alice",
        )
        await db.execute(generations.update().where(generations.c.id == generation.id)
                         .values(created_at=utc_now_minus(age_days * 86400)))
        pictures.append(generation)
    assert await retention.old_generation_ids(db, days=7) == [pictures[0].id]
    assert await retention.delete_generation_row(db, pictures[0].id) == ["generations/10/0.png"]
    assert await get_generation(db, pictures[0].id) is None

    settings = Settings()
    ended = await jobs.submit_job(db, settings, "generate", "guild-1", "a", {"request": {}})
    waiting = await jobs.submit_job(db, settings, "generate", "guild-1", "b", {"request": {}})
    await jobs.request_cancel(db, ended.id)
    await db.execute(job_events.update().values(created_at=utc_now_minus(30 * 86400)))
    assert await retention.delete_old_job_events(db, days=7) == 2  # queued + cancelled of the ended job
    assert [e.job_id for e in await jobs.events_after(db, jobs.START)] == [waiting.id]
    assert (await jobs.get_job(db, ended.id)).status == "cancelled"  # the job row keeps its outcome
