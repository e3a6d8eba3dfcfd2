"""Teaching pets through the Python API (what the bot calls) and the `pawtrait` CLI, end to end."""

from __future__ import annotations

import dataclasses
import io
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

import engine.usecases.teach
from config.settings import Settings
from engine.usecases.teach import TeachError, teach_photos
from storage import keys, runs
from storage.connect import file_store
from storage.db import open_database
from storage.files import FileStore
from storage.generations import record_generation
from storage.pet_deletion import forget_pet
from storage.pets import LOCAL_GUILD, find_pet
from storage.photos import list_photos
from storage.schema import pets

import photo_samples as samples
from conftest import distributed
from training_helpers import run_with_a_checkpoint

ROOT = Path(__file__).parents[1]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """No model is needed to teach photos; small crops keep the tests quick."""
    return Settings(data_dir=tmp_path / "data", vae=None, device="cpu", resolution=128)


def photos(*seeds: int) -> list[tuple[str, bytes]]:
    return [(f"IMG_{seed}.jpg", samples.jpeg(seed)) for seed in seeds]


async def teach(db, settings: Settings, files, name: str = "Thor", owner: str = "alice", **options):
    return await teach_photos(
        db, file_store(settings), settings, "guild-1", owner, name, "cat", files, added_by=owner, **options
    )


async def stored_keys(store: FileStore, prefix: str) -> set[str]:
    return {item.key for item in await store.list(prefix)}


async def test_teaching_keeps_originals_crops_and_a_contact_sheet(db, store: FileStore, settings: Settings) -> None:
    files = photos(1, 2, 3) + [("notes.jpg", samples.text_file()), ("IMG_1 again.png", samples.encode(samples.varied_photo(1), "PNG"))]
    report = await teach(db, settings, files)

    assert report.pet is not None and report.created
    assert [(f.name, f.status) for f in report.files] == [
        ("IMG_1.jpg", "warning"), ("IMG_2.jpg", "warning"), ("IMG_3.jpg", "warning"),
        ("notes.jpg", "rejected"), ("IMG_1 again.png", "skipped"),
    ]
    assert report.files[4].reason.startswith("near-duplicate of IMG_1.jpg")
    assert report.accepted == 3 and report.total_photos == 3
    assert any("only 3 photos" in warning for warning in report.warnings)

    pet_id = report.pet.id
    rows = await list_photos(db, pet_id)
    assert [row.original_name for row in rows] == ["IMG_1.jpg", "IMG_2.jpg", "IMG_3.jpg"]
    for row, (_, content) in zip(rows, files):
        assert await store.get_bytes(row.original_path) == content
        assert Image.open(await store.local_path(row.prepared_path)).size == (128, 128)
        assert (row.width, row.height, row.crop_left, row.crop_top, row.crop_size) == (640, 560, 40, 0, 560)
        assert row.added_by == "alice"
    stored = await stored_keys(store, f"{keys.pet_prefix(pet_id)}/photos")
    assert stored == {row.original_path for row in rows} | {row.prepared_path for row in rows}
    # One contact sheet, in the store under the pet, and the report's local copy of it.
    [sheet_key] = await stored_keys(store, keys.contact_sheets(pet_id))
    assert sheet_key.startswith(f"pets/{pet_id}/sheet/") and sheet_key.endswith(".png")
    assert report.contact_sheet.read_bytes() == await store.get_bytes(sheet_key)
    assert Image.open(report.contact_sheet).width > 256
    assert await stored_keys(store, "pets") == stored | {sheet_key}


async def test_adding_later_skips_photos_taught_before(db, store: FileStore, settings: Settings) -> None:
    first = await teach(db, settings, photos(1, 2))
    first_sheet = Image.open(first.contact_sheet).size
    report = await teach(db, settings, photos(2, 3, 4, 5))
    assert not report.created
    assert report.files[0].status == "skipped"
    assert report.files[0].reason == "duplicate of IMG_2.jpg, taught before"
    assert report.accepted == 3 and report.total_photos == 5
    assert not any("only" in warning for warning in report.warnings)  # 5 photos: no more nagging

    # The contact sheet was drawn again with all 5 crops, replacing the old one.
    assert Image.open(report.contact_sheet).size != first_sheet
    [sheet_key] = await stored_keys(store, keys.contact_sheets(report.pet.id))
    assert await store.get_bytes(sheet_key) == report.contact_sheet.read_bytes()
    # Nothing new accepted: the same sheet is handed back, not drawn again.
    again = await teach(db, settings, photos(3))
    assert again.accepted == 0 and again.contact_sheet.read_bytes() == report.contact_sheet.read_bytes()
    assert await stored_keys(store, keys.contact_sheets(report.pet.id)) == {sheet_key}


async def test_someone_elses_pet_cannot_be_changed_except_by_a_moderator(db, settings: Settings) -> None:
    await teach(db, settings, photos(1))
    with pytest.raises(TeachError, match=r"^Thor belongs to another member\.$"):
        await teach(db, settings, photos(2), name="thor", owner="mallory")
    report = await teach(db, settings, photos(2), name="thor", owner="moderator", allow_other_owner=True)
    assert report.pet is not None and report.pet.owner_id == "alice" and report.total_photos == 2


async def test_owners_are_limited_in_pets_and_pets_in_photos(db, settings: Settings) -> None:
    settings = Settings(data_dir=settings.data_dir, resolution=128, max_pets_per_user=2, max_photos_per_pet=3)
    await teach(db, settings, photos(1), name="Thor")
    await teach(db, settings, photos(2), name="Loki")
    with pytest.raises(TeachError, match="You already have 2 pets"):
        await teach(db, settings, photos(3), name="Odin")
    report = await teach(db, settings, photos(4, 5, 6), name="Thor")
    assert [f.status for f in report.files] == ["warning", "warning", "skipped"]
    assert report.files[2].reason == "the pet already has 3 photos, the most allowed"


@pytest.mark.both_modes
async def test_a_failed_teach_keeps_the_new_pet_when_a_concurrent_teach_gave_it_photos(
    settings: Settings, mode: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alice sends two batches of Thor at once. The first creates Thor, and while it uploads
    its photos the second commits two; the first then finds too many photos and fails. Thor
    and the second batch's photos and files must stay; only the first batch's files go."""
    limited = dataclasses.replace(settings, max_photos_per_pet=4)
    shared = distributed(limited, request) if mode == "distributed" else limited
    db = await open_database(shared.database_url)
    store = file_store(shared)
    put_photo, second = engine.usecases.teach._put_photo, []

    async def second_batch_first(*args):
        if not second:  # the first batch's first upload: the second batch runs to its end now
            second.append(None)
            second[0] = await teach(db, shared, photos(4, 5))
        return await put_photo(*args)

    monkeypatch.setattr(engine.usecases.teach, "_put_photo", second_batch_first)
    try:
        with pytest.raises(TeachError, match="Photos were added to Thor at the same time"):
            await teach(db, shared, photos(1, 2, 3))
        assert not second[0].created and second[0].accepted == 2
        thor = await find_pet(db, "guild-1", "Thor")
        assert thor is not None, "the failed batch deleted the pet, and the other batch's photos with it"
        kept = await list_photos(db, thor.id)
        assert sorted(p.original_name for p in kept) == ["IMG_4.jpg", "IMG_5.jpg"]
        [sheet] = await stored_keys(store, keys.contact_sheets(thor.id))
        files = {p.original_path for p in kept} | {p.prepared_path for p in kept} | {sheet}
        assert await stored_keys(store, keys.pet_prefix(thor.id)) == files  # the first batch's files are gone
    finally:
        await db.close()


async def test_a_batch_with_nothing_usable_creates_no_pet(db, store: FileStore, settings: Settings) -> None:
    report = await teach(db, settings, [("a.jpg", samples.text_file()), ("b.jpg", samples.truncated_jpeg(1))])
    assert report.pet is None and report.accepted == 0 and report.contact_sheet is None
    assert await find_pet(db, "guild-1", "Thor") is None
    assert await store.list("pets") == []


async def test_names_and_classes_are_checked(db, settings: Settings) -> None:
    with pytest.raises(TeachError, match="name needs 1 to 32"):
        await teach(db, settings, photos(1), name="x" * 33)
    with pytest.raises(TeachError, match="plain word"):
        await teach_photos(db, file_store(settings), settings, "g", "u", "Thor", "../cat", photos(1), "u")


async def test_teaching_into_a_bucket_and_forgetting(settings: Settings, request: pytest.FixtureRequest) -> None:
    """Distributed: photos and the contact sheet go to the S3 bucket (not the data folder); every
    host reads them from there; forgetting the pet leaves none of its objects in the bucket
    (photos, sheet, checkpoints, validation images, generated pictures)."""
    shared = distributed(settings, request)
    db = await open_database(shared.database_url)
    store = file_store(shared)
    try:
        thor = await teach(db, shared, photos(1, 2, 3))
        loki = await teach(db, shared, photos(4, 5), name="Loki")
        assert thor.pet is not None and loki.pet is not None
        rows = await list_photos(db, thor.pet.id)
        [sheet_key] = await stored_keys(store, keys.contact_sheets(thor.pet.id))
        expected = {row.original_path for row in rows} | {row.prepared_path for row in rows} | {sheet_key}
        assert len(expected) == 7 and await stored_keys(store, keys.pet_prefix(thor.pet.id)) == expected
        assert not (shared.data_dir / "pets").exists()  # the data folder holds only cached copies

        # Another host, with its own data folder (and cache), finds the same files in the bucket.
        elsewhere = file_store(dataclasses.replace(shared, data_dir=shared.data_dir.parent / "other-host"))
        assert await elsewhere.get_bytes(sheet_key) == thor.contact_sheet.read_bytes()
        for row, (_, content) in zip(rows, photos(1, 2, 3)):
            assert await elsewhere.get_bytes(row.original_path) == content
            assert Image.open(io.BytesIO(await elsewhere.get_bytes(row.prepared_path))).size == (128, 128)

        # Thor is trained and painted too: a checkpoint, a validation image and a generation's pictures.
        run = await run_with_a_checkpoint(db, store, thor.pet, 1)
        await runs.finish_run(db, run.run_id, "succeeded", 1)
        pictures = [f"{keys.generation_folder(keys.new_tag())}/1-seed-1.png"]
        await store.put_bytes(pictures[0], b"png")
        await record_generation(
            db, pictures, guild_id="guild-1", pet_id=thor.pet.id, checkpoint_id=run.checkpoint_id, prompt="TOK",
            negative_prompt="", seed=1, steps=1, guidance=5.0, width=64, height=64, lora_scale=1.0, requested_by="alice",
        )

        loki_keys = await stored_keys(store, keys.pet_prefix(loki.pet.id))
        footprint = await forget_pet(db, store, thor.pet)
        assert (footprint.photos, footprint.runs, footprint.generations) == (3, 1, 1)
        assert await stored_keys(store, keys.pet_prefix(thor.pet.id)) == set()
        assert await stored_keys(store, "") == loki_keys  # only Loki's photos and sheet stay
        assert not thor.contact_sheet.exists()  # nor a cached copy on this host
        assert await find_pet(db, "guild-1", "Thor") is None
    finally:
        await db.close()


# ---- the CLI, as a separate process -------------------------------------------------------------


def pawtrait(env: dict[str, str], *args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_photos(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    files = {
        "IMG_1.jpg": samples.jpeg(1),
        "IMG_2.jpg": samples.jpeg(1, quality=80),  # the same photo re-compressed
        "notes.jpg": samples.text_file(),
        "IMG_3.HEIC": samples.heic(3),
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return {name: folder / name for name in files}


def test_cli_teach_pets_forget(env: dict[str, str], settings: Settings, tmp_path: Path) -> None:
    files = write_photos(tmp_path / "photos")
    result = pawtrait(env, "teach", "Thor", "--class", "cat", *map(str, files.values()))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("warning   IMG_1.jpg: accepted, but it is small")
    assert lines[1] == "skipped   IMG_2.jpg: near-duplicate of IMG_1.jpg (almost the same picture)"
    assert lines[2].startswith("rejected  notes.jpg: not an image")
    assert lines[3].startswith("warning   IMG_3.HEIC")
    assert "Thor (cat, trigger token " in result.stdout and "2 photos added, 2 in all" in result.stdout
    sheet = Path(result.stdout.split("contact sheet: ")[1].strip())
    assert sheet.is_file() and sheet.is_relative_to(settings.data_dir)

    listing = pawtrait(env, "pets")
    assert listing.returncode == 0
    header, row = listing.stdout.splitlines()
    assert header.split() == ["NAME", "OWNER", "CLASS", "TOKEN", "PHOTOS", "STATUS"]
    assert row.split()[:3] == ["Thor", LOCAL_GUILD, "cat"] and row.split()[4:] == ["2", "ready", "to", "train"]

    refused = pawtrait(env, "forget", "Thor")  # stdin is not a terminal and no --yes
    assert refused.returncode == 1 and "pass --yes" in refused.stderr
    assert sheet.is_file()

    deleted = pawtrait(env, "forget", "thor", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert "deleted Thor and its 2 photos, 0 runs, 0 generations" in deleted.stdout
    assert not sheet.parent.exists()
    assert "no pets yet" in pawtrait(env, "pets").stdout


async def test_cli_forget_asks_on_a_terminal(env: dict[str, str], db, tmp_path: Path) -> None:
    files = write_photos(tmp_path / "photos")
    assert pawtrait(env, "teach", "Thor", "--class", "cat", str(files["IMG_1.jpg"])).returncode == 0
    for answer, code in (("n\n", 1), ("y\n", 0)):
        controller, terminal = pty.openpty()
        os.write(controller, answer.encode())
        result = pawtrait(env, "forget", "Thor", stdin=terminal)
        os.close(terminal)
        prompt = os.read(controller, 4096).decode()
        os.close(controller)
        assert result.returncode == code, result.stderr
        assert "Delete Thor and its 1 photos, 0 runs, 0 generations? [y/N]" in result.stdout + prompt
    assert await db.scalar(select(func.count()).select_from(pets)) == 0


def test_cli_exit_codes(env: dict[str, str], tmp_path: Path) -> None:
    files = write_photos(tmp_path / "photos")
    nothing = pawtrait(env, "teach", "Thor", "--class", "cat", str(files["notes.jpg"]), str(tmp_path / "missing.jpg"))
    assert nothing.returncode == 1
    assert "rejected  missing.jpg: cannot read the file" in nothing.stdout
    assert "Thor was not created" in nothing.stdout
    usage = pawtrait(env, "teach", "Thor", str(files["IMG_1.jpg"]))  # no --class
    assert usage.returncode == 2 and "--class" in usage.stderr
    for command in ("teach", "pets", "forget"):
        helped = pawtrait(env, command, "--help")
        assert helped.returncode == 0 and f"usage: pawtrait {command}" in helped.stdout
    assert all(name in pawtrait(env, "--help").stdout for name in ("teach", "pets", "forget"))
