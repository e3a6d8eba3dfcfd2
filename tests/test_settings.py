"""Configuration: defaults, .env files, and one-line errors for bad values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.settings import DEFAULT_MODEL, DEFAULT_VAE, Settings, SettingsError, environment


def test_defaults_match_the_documented_ones() -> None:
    settings = Settings.from_env({})
    assert settings.data_dir == Path("data")
    assert settings.model == DEFAULT_MODEL
    assert settings.vae == DEFAULT_VAE
    assert settings.device == "auto"
    assert settings.max_photos_per_pet == 30
    assert settings.cuda_graphs and settings.compile and not settings.compile_training
    assert settings.guidance_interval == (0.28, 5.42)


def test_the_guidance_interval_can_be_set_or_switched_off() -> None:
    assert Settings.from_env({"PAWTRAIT_GUIDANCE_INTERVAL": "0.5-3"}).guidance_interval == (0.5, 3.0)
    assert Settings.from_env({"PAWTRAIT_GUIDANCE_INTERVAL": "off"}).guidance_interval is None


def test_empty_vae_means_the_models_own() -> None:
    assert Settings.from_env({"PAWTRAIT_VAE": ""}).vae is None


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("PAWTRAIT_DEVICE", "gpu", "auto, cuda or cpu"),
        ("PAWTRAIT_MAX_PHOTOS", "0", "a whole number >= 1"),
        ("PAWTRAIT_MAX_PHOTOS", "lots", "a whole number >= 1"),
        ("PAWTRAIT_RESOLUTION", "1000", "a multiple of 64"),
        ("PAWTRAIT_COMPILE", "maybe", "true or false"),
        ("PAWTRAIT_CUDA_GRAPHS", "sometimes", "true or false"),
        ("PAWTRAIT_GUIDANCE_INTERVAL", "5.42-0.28", "LOW-HIGH with 0 <= LOW < HIGH"),
        ("PAWTRAIT_GUIDANCE_INTERVAL", "middle", "'off' or two noise levels"),
    ],
)
def test_a_bad_value_names_variable_value_and_what_is_allowed(name: str, value: str, allowed: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    message = str(caught.value)
    assert name in message and repr(value) in message and allowed in message
    assert "\n" not in message


def test_env_file_is_read_and_real_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PAWTRAIT_MAX_PHOTOS=12\nPAWTRAIT_DEVICE=cpu\n")
    monkeypatch.setenv("PAWTRAIT_DEVICE", "cuda")
    merged = environment(env_file)
    settings = Settings.from_env(merged)
    assert settings.max_photos_per_pet == 12
    assert settings.device == "cuda"


def test_cli_stops_start_up_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "doctor"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PAWTRAIT_DEVICE": "gpu", "PYTHONPATH": str(Path(__file__).parents[1])},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "pawtrait: PAWTRAIT_DEVICE='gpu' is not valid: expected auto, cuda or cpu"
