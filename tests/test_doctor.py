"""`pawtrait doctor` tells an operator what is set up and what the bot still needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def doctor(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "doctor"],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_a_token_it_says_so_and_fails(env: dict[str, str], tmp_path: Path) -> None:
    result = doctor(env, tmp_path)
    assert result.returncode == 1
    assert "Discord token: not set" in result.stdout
    assert "missing for `pawtrait bot`: DISCORD_TOKEN" in result.stdout
    assert "base model: " in result.stdout and "local folder" in result.stdout
    assert "schema version" in result.stdout
    assert "torch " in result.stdout and "CPU" in result.stdout


def test_with_everything_set_it_passes_and_never_prints_the_token(env: dict[str, str], tmp_path: Path) -> None:
    secret = "MTIz.secret-token-value"
    result = doctor({**env, "DISCORD_TOKEN": secret}, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Discord token: set" in result.stdout
    assert secret not in result.stdout + result.stderr


def test_a_missing_model_folder_is_reported(env: dict[str, str], tmp_path: Path) -> None:
    result = doctor({**env, "DISCORD_TOKEN": "x", "PAWTRAIT_MODEL": str(tmp_path / "nowhere")}, tmp_path)
    assert result.returncode == 1
    assert "base model" in result.stdout.split("missing for `pawtrait bot`:")[1]
