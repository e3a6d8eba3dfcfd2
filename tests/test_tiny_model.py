"""The tiny SDXL loads through the same path as real weights and has SDXL's structure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from diffusers import EulerDiscreteScheduler

from config.settings import Settings
from engine.gpu.models import load_base_model

ROOT = Path(__file__).parents[1]


def test_make_tiny_model_command_writes_a_loadable_pipeline(tmp_path: Path) -> None:
    target = tmp_path / "tiny"
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "make-tiny-model", str(target)],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (target / "model_index.json").is_file()
    base = load_base_model(Settings(model=str(target), vae=None, device="cpu", data_dir=tmp_path))
    pipe = base.pipe
    assert pipe.tokenizer.model_max_length == 77 and pipe.tokenizer_2.model_max_length == 77
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.vae_scale_factor == 8
    ids = pipe.tokenizer("a photo of TOK cat", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77


def test_a_separate_vae_folder_is_used_when_configured(tiny_model_dir: Path, tmp_path: Path) -> None:
    base = load_base_model(Settings(model=str(tiny_model_dir), vae=str(tiny_model_dir), device="cpu", data_dir=tmp_path))
    assert base.vae_id == str(tiny_model_dir)
    assert base.pipe.vae.config.latent_channels == 4
