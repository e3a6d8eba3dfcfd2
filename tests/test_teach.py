"""Teaching pets through the Python API (what the bot calls) and the `pawtrait` CLI, end to end."""

from __future__ import annotations

import os
import pty
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import photo_samples as samples
from engine.settings import Settings
from engine.teach import TeachError, teach_photos
from storage.files import DataDir
from storage.pets import LOCAL_GUILD, find_pet
from storage.photos import list_photos

ROOT = Path(__file__).parents[1]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """No model is needed to teach photos; small crops keep the tests quick."""
    return Settings(data_dir=tmp_path / "data", vae=None, device="cpu", resolution=128)


def photos(*seeds: int) -> list[tuple[str, bytes]]:
    return [(f"IMG_{seed}.jpg", samples.jpeg(seed)) for seed in seeds]


async def teach(db, settings: Settings, files, name: str = "Thor", owner: str = "alice", **options):
    return await teach_photos(
        db, DataDir(settings.data_dir), settings, "guild-1", owner, name, "cat", files, added_by=owner, **options
    )


async def test_teaching_keeps_originals_crops_and_a_contact_sheet(db, settings: Settings) -> None:
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

    data = DataDir(settings.data_dir)
    rows = await list_photos(db, report.pet.id)
    assert [row.original_name for row in rows] == ["IMG_1.jpg", "IMG_2.jpg", "IMG_3.jpg"]
    for row, (_, content) in zip(rows, files):
        assert data.abs(row.original_path).read_bytes() == content
        assert Image.open(data.abs(row.prepared_path)).size == (128, 128)
        assert (row.width, row.height, row.crop_left, row.crop_top, row.crop_size) == (640, 560, 40, 0, 560)
        assert row.added_by == "alice"
    on_disk = {p.relative_to(settings.data_dir).as_posix() for p in data.photos_dir(report.pet.id).iterdir()}
    assert on_disk == {row.original_path for row in rows} | {row.prepared_path for row in rows}
    assert report.contact_sheet == data.pet_dir(report.pet.id) / "contact-sheet.png"
    assert Image.open(report.contact_sheet).width > 256


async def test_adding_later_skips_photos_taught_before(db, settings: Settings) -> None:
    await teach(db, settings, photos(1, 2))
    report = await teach(db, settings, photos(2, 3, 4, 5))
    assert not report.created
    assert report.files[0].status == "skipped"
    assert report.files[0].reason == "duplicate of IMG_2.jpg, taught before"
    assert report.accepted == 3 and report.total_photos == 5
    assert not any("only" in warning for warning in report.warnings)  # 5 photos: no more nagging


async def test_someone_elses_pet_cannot_be_changed_except_by_a_moderator(db, settings: Settings) -> None:
    await teach(db, settings, photos(1))
    with pytest.raises(TeachError, match="^Thor belongs to another member$"):
        await teach(db, settings, photos(2), name="thor", owner="mallory")
    report = await teach(db, settings, photos(2), name="thor", owner="moderator", allow_other_owner=True)
    assert report.pet is not None and report.pet.owner_id == "alice" and report.total_photos == 2


async def test_owners_are_limited_in_pets_and_pets_in_photos(db, settings: Settings) -> None:
    settings = Settings(data_dir=settings.data_dir, resolution=128, max_pets_per_user=2, max_photos_per_pet=3)
    await teach(db, settings, photos(1), name="Thor")
    await teach(db, settings, photos(2), name="Loki")
    with pytest.raises(TeachError, match="you already have 2 pets"):
        await teach(db, settings, photos(3), name="Odin")
    report = await teach(db, settings, photos(4, 5, 6), name="Thor")
    assert [f.status for f in report.files] == ["warning", "warning", "skipped"]
    assert report.files[2].reason == "the pet already has 3 photos, the most allowed"


async def test_a_batch_with_nothing_usable_creates_no_pet(db, settings: Settings) -> None:
    report = await teach(db, settings, [("a.jpg", samples.text_file()), ("b.jpg", samples.truncated_jpeg(1))])
    assert report.pet is None and report.accepted == 0 and report.contact_sheet is None
    assert await find_pet(db, "guild-1", "Thor") is None
    assert not (settings.data_dir / "pets").exists()


async def test_names_and_classes_are_checked(db, settings: Settings) -> None:
    with pytest.raises(TeachError, match="name needs 1 to 32"):
        await teach(db, settings, photos(1), name="x" * 33)
    with pytest.raises(TeachError, match="plain word"):
        await teach_photos(db, DataDir(settings.data_dir), settings, "g", "u", "Thor", "../cat", photos(1), "u")


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


def test_cli_forget_asks_on_a_terminal(env: dict[str, str], settings: Settings, tmp_path: Path) -> None:
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
    conn = sqlite3.connect(settings.db_path)
    assert conn.execute("SELECT count(*) FROM pets").fetchone()[0] == 0
    conn.close()


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
