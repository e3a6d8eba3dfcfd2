"""The queue from a shell: `train/imagine --detach`, `jobs`, `cancel`, `wait`, and `pawtrait worker` running them,
on one host (SQLite + data folder) and as a second host would (PostgreSQL + S3, the worker with its own data folder)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main
from config.settings import Settings
from storage.connect import open_storage

from training_helpers import pet_with_photos

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.both_modes


def pawtrait(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def _make_pets(settings: Settings) -> None:
    db, store = await open_storage(settings)
    try:
        await pet_with_photos(db, store, name="Thor")
        await pet_with_photos(db, store, name="Loki")
    finally:
        await db.close()


def test_detach_then_worker_then_wait(
    mode: str, settings: Settings, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in env.items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    asyncio.run(_make_pets(settings))

    code, out, err = pawtrait(capsys, "imagine", "a photo of a cat", "--steps", "1", "--seed", "3", "--detach")
    assert code == 0, err
    painting = int(out.strip())
    train_args = ["train", "Thor", "--steps", "4", "--checkpoint-every", "2", "--validate-every", "0",
                  "--resolution", "64", "--detach"]
    code, out, err = pawtrait(capsys, *train_args)
    assert code == 0, err
    training = int(out.strip())
    assert f"pawtrait wait {training}" in err

    # A pet trains once at a time, and one training per user waits: refused in plain words.
    code, out, err = pawtrait(capsys, *train_args)
    assert code == 2 and "Thor is already training or waiting to train." in err and out == ""
    code, out, err = pawtrait(capsys, "train", "Loki", *train_args[2:])
    assert code == 2 and "You already have 1 training waiting (the limit is 1)" in err and out == ""

    code, out, _ = pawtrait(capsys, "imagine", "a photo of a dog", "--steps", "1", "--detach")
    dropped = int(out.strip())
    code, out, _ = pawtrait(capsys, "cancel", str(dropped))
    assert code == 0 and "cancelled" in out
    code, _, err = pawtrait(capsys, "cancel", "999")
    assert code == 1 and "no job #999" in err

    code, out, _ = pawtrait(capsys, "jobs")
    listed = {int(line.split()[0]): line for line in out.splitlines()[1:]}
    assert set(listed) == {painting, training}
    assert listed[painting].split()[4] == "1" and listed[training].split()[4] == "2"  # generations go first
    code, out, _ = pawtrait(capsys, "jobs", "--all")
    assert dropped in {int(line.split()[0]) for line in out.splitlines()[1:]}

    # The worker runs as another host would: in distributed mode with a data folder of its own,
    # so everything it hands over goes through the database and the bucket.
    worker_env = {**env, "OMP_NUM_THREADS": "1"}
    if mode == "distributed":
        worker_env["PAWTRAIT_DATA_DIR"] = str(tmp_path / "worker-host")
    worker = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker"], cwd=REPO, env=worker_env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        code, out, err = pawtrait(capsys, "wait", str(training))
        assert code == 0, err
        assert "checkpoint step 4:" in out and "step 4/4" in out
        code, out, err = pawtrait(capsys, "wait", str(painting), "--quiet")
        assert code == 0, err
        png = Path(out.splitlines()[-1])
        assert png.suffix == ".png" and png.is_file() and png.read_bytes().startswith(b"\x89PNG")
        assert png.resolve().is_relative_to(settings.data_dir.resolve())  # a local copy on this host
        code, _, _ = pawtrait(capsys, "wait", str(dropped))
        assert code == 1
        code, _, err = pawtrait(capsys, "wait", "999")
        assert code == 1 and "no job #999" in err
        code, out, _ = pawtrait(capsys, "jobs")
        assert out.startswith("no queued or running jobs")
    finally:
        worker.terminate()
        worker.wait(30)
