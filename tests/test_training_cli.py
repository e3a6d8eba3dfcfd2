"""`pawtrait train` as an operator runs it: real processes, Ctrl-C, --resume, and clear errors."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.main import build_parser, main
from cli.train import params_from_args
from config.settings import Settings
from engine.usecases.training.params import TrainingParams
from storage import runs
from storage.files import FileStore
from storage.pets import LOCAL_GUILD, create_pet

from training_helpers import pet_with_photos

QUICK_ARGS = ["--resolution", "64", "--validate-every", "0", "--checkpoint-every", "1"]


def pawtrait(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "train", *args],
        env=env, cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.fixture
def cli_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The test settings both for subprocesses and for in-process `main()` calls."""
    for key, value in env.items():
        if key.startswith(("PAWTRAIT_", "AWS_")):
            monkeypatch.setenv(key, value)
    return env


async def test_ctrl_c_cancels_cleanly_and_resume_finishes(
    db, store: FileStore, settings: Settings, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    pet = await pet_with_photos(db, store)
    process = pawtrait(cli_env, "Thor", "--steps", "8", *QUICK_ARGS)

    async def first_checkpoint_written() -> bool:
        started = await runs.list_runs(db, pet.id)
        return bool(started) and bool(await runs.list_checkpoints(db, started[0].id))

    deadline = time.monotonic() + 120
    while not await first_checkpoint_written() and process.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "--resume" in err
    run = (await runs.list_runs(db, pet.id))[0]
    assert run.status == "cancelled" and 1 <= run.step < 8
    assert [c.step for c in await runs.list_checkpoints(db, run.id)] == list(range(1, run.step + 1))

    # The resume runs in this process (a second interpreter start costs more than the training).
    assert await asyncio.to_thread(main, ["train", "Thor", "--resume"]) == 0
    out, err = capsys.readouterr()
    assert f"resuming run {run.id}" in err
    run = await runs.get_run(db, run.id)
    assert (run.status, run.step) == ("succeeded", 8)
    final = (await runs.list_checkpoints(db, run.id))[-1]
    diffusers, kohya = await store.local_path(final.diffusers_file), await store.local_path(final.kohya_file)
    assert f"diffusers LoRA: {diffusers}" in out and f"A1111/ComfyUI LoRA: {kohya}" in out
    assert kohya.is_file() and kohya.is_relative_to(settings.data_dir)


async def test_bad_requests_exit_2_with_a_plain_message(
    db, store: FileStore, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    await create_pet(db, LOCAL_GUILD, "owner", "Ghost", "dog")
    pet = await pet_with_photos(db, store)
    cases = [
        (["Nobody"], "no pet called 'Nobody'"),
        (["Ghost"], "Ghost has no photos yet"),
        (["Thor", "--steps", "0"], "Steps must be at least 1."),
        (["Thor", "--steps", "-3"], "Steps must be at least 1."),
        (["Thor", "--rank", "0"], "Rank must be at least 1"),
        (["Thor", "--resume"], "no unfinished training run"),
    ]
    for args, message in cases:
        assert await asyncio.to_thread(main, ["train", *args]) == 2, args
        assert message in capsys.readouterr().err
    assert await runs.list_runs(db, pet.id) == []


async def test_a_model_that_does_not_load_keeps_the_run_for_resume(
    db, store: FileStore, cli_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pet = await pet_with_photos(db, store)
    monkeypatch.setenv("PAWTRAIT_MODEL", str(tmp_path / "nowhere"))
    assert await asyncio.to_thread(main, ["train", "Thor", *QUICK_ARGS]) == 2
    err = capsys.readouterr().err
    [run] = await runs.list_runs(db, pet.id)
    assert "could not load the base model" in err and "Set PAWTRAIT_MODEL" in err
    assert f"Run {run.id} is kept: `pawtrait train Thor --resume` starts it" in err
    assert (await runs.latest_unfinished_run(db, pet.id)).id == run.id  # what --resume picks up


def test_the_command_line_checkpoints_a_run_as_the_bot_does() -> None:
    """Both ask TrainingParams.for_steps: about five checkpoints and rounds a run, unless an option says otherwise."""
    settings = Settings(model="unused", device="cpu", resolution=512, train_mode="lean")
    parse = build_parser().parse_args
    params = params_from_args(parse(["train", "Thor", "--steps", "50"]), settings)
    assert params == TrainingParams.for_steps(50, settings)
    assert (params.checkpoint_every, params.validate_every, params.resolution, params.mode) == (10, 10, 512, "lean")
    chosen = params_from_args(parse(["train", "Thor", "--steps", "50", "--validate-every", "0", "--mode", "fast"]), settings)
    assert (chosen.checkpoint_every, chosen.validate_every, chosen.mode) == (10, 0, "fast")
