"""Shared fixtures: a tiny SDXL on disk, settings pointing at a temporary data folder, a database."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

from engine.settings import Settings
from storage.db import connect

# Two cores: keep each test process to one intra-op thread so parallel work does not thrash.
torch.set_num_threads(int(os.environ.get("PAWTRAIT_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random SDXL, written once per test session with save_pretrained."""
    from engine.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    """Settings for a fresh data folder using the tiny model (and its own VAE) on the CPU."""
    return Settings(data_dir=tmp_path / "data", model=str(tiny_model_dir), vae=None, device="cpu", resolution=128)


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    """The same configuration as environment variables, for subprocesses (CLI, workers)."""
    values = dict(os.environ)
    values.update(
        PAWTRAIT_DATA_DIR=str(settings.data_dir),
        PAWTRAIT_MODEL=settings.model,
        PAWTRAIT_VAE="",
        PAWTRAIT_DEVICE="cpu",
        PAWTRAIT_RESOLUTION=str(settings.resolution),
        # Several processes share two cores: OpenMP threads per process would thrash them.
        OMP_NUM_THREADS="1",
    )
    values.pop("DISCORD_TOKEN", None)
    return values


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator:
    connection = await connect(settings.db_path)
    yield connection
    await connection.close()
