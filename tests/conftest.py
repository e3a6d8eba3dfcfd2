"""Shared fixtures: a tiny SDXL on disk, settings pointing at a fresh installation, its database and files.

An installation runs in one of two modes:
- embedded: a SQLite file and the data folder (the default install);
- distributed: a PostgreSQL database and an S3 bucket (moto) shared by many hosts, each
  started for real by tests/services.py.
Tests run embedded; a module marked `pytest.mark.both_modes` runs each test in both.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import torch

import engine.usecases.jobs  # noqa: F401 - registers the job kinds with the queue (storage.job_kinds)
from config.settings import Settings
from engine.gpu.generation.generator import Generator
from engine.gpu.models import BaseModel, load_base_model
from storage.connect import file_store
from storage.db import Database, open_database
from storage.files import DataDir, FileStore
from storage.schema import metadata

# Real PostgreSQL and S3 (moto) servers, session-scoped (tests/services.py).
from services import postgres_server, s3_server  # noqa: F401

# Two cores: keep each test process to one intra-op thread so parallel work does not thrash.
torch.set_num_threads(int(os.environ.get("PAWTRAIT_TEST_THREADS", "2")))

MODES = ("embedded", "distributed")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_modes: run each test embedded (SQLite + folder) and distributed (PostgreSQL + S3)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "mode" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_modes"):
        metafunc.parametrize("mode", MODES, indirect=True)


@pytest.fixture
def mode(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "embedded")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random SDXL, written once per test session with save_pretrained."""
    from engine.gpu.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="module")
def base(tiny_model_dir: Path) -> BaseModel:
    """One tiny SDXL per test module, shared like the worker shares its model between runs."""
    return load_base_model(Settings(model=str(tiny_model_dir), vae=None, device="cpu", resolution=64))


@pytest.fixture(scope="module")
def generator(base: BaseModel) -> Generator:
    """The worker's painter on that model: trainings paint their validation rounds and class images with it."""
    return Generator(base, memory="full")


@pytest.fixture
def data(settings: Settings) -> DataDir:
    """This host's local folder: where checkpoints and pictures are staged before the store has them."""
    return DataDir(settings.data_dir)


@pytest.fixture(scope="session", autouse=True)
def scoring_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """Tiny random DINO and CLIP folders (engine/gpu/scoring/tiny.py), configured for every process the
    tests start, so no test downloads the real scoring models; yields (dino folder, clip folder)."""
    from people_helpers import see_no_people

    from engine.gpu.scoring.tiny import make_scoring_models

    dino, clip = make_scoring_models(tmp_path_factory.mktemp("scoring"))
    see_no_people((dino, clip))  # every training's photo check passes, as for real photos of pets
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAWTRAIT_SCORE_DINO", str(dino))
        patch.setenv("PAWTRAIT_SCORE_CLIP", str(clip))
        yield dino, clip


@pytest.fixture(scope="session", autouse=True)
def safety_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny random safety checker that flags nothing (engine/gpu/safety/tiny.py), configured for
    every process the tests start, so every picture is screened as in production; yields its folder."""
    from engine.gpu.safety.tiny import make_safety_checker

    folder = make_safety_checker(tmp_path_factory.mktemp("safety") / "checker")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAWTRAIT_SAFETY_MODEL", str(folder))
        yield folder


# One PostgreSQL database per test module, emptied before each test: creating and migrating a
# database for every test costs about a second on two cores, emptying one milliseconds.
# (Nothing to empty while the first test of the module never opened, i.e. migrated, it.)
_EMPTY = (
    "DO $$ BEGIN IF to_regclass('alembic_version') IS NOT NULL THEN {deletes}; "
    "PERFORM setval(oid, 1, false) FROM pg_class WHERE relkind = 'S'; END IF; END $$;"
).format(deletes="; ".join(f"DELETE FROM {table.name}" for table in reversed(metadata.sorted_tables)))
_DATABASES: dict[str, str] = {}


def distributed(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The same installation on an empty PostgreSQL database and a fresh bucket."""
    postgres, s3 = request.getfixturevalue("postgres_server"), request.getfixturevalue("s3_server")
    module = request.module.__name__
    url = _DATABASES.get(module)
    if url is None:
        url = _DATABASES[module] = postgres.create_database()  # migrated when first opened
    else:
        postgres.psql(_EMPTY, database=url.rsplit("/", 1)[1])
    bucket = s3.create_bucket()
    return dataclasses.replace(settings, database=url, files=f"s3://{bucket}/pawtrait", extra=s3.env(bucket, "pawtrait"))


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path, mode: str, request: pytest.FixtureRequest) -> Settings:
    """Settings for a fresh installation using the tiny model (and its own VAE) on the CPU."""
    local = Settings(data_dir=tmp_path / "data", model=str(tiny_model_dir), vae=None, device="cpu", resolution=128,
                     score_dino=os.environ["PAWTRAIT_SCORE_DINO"], score_clip=os.environ["PAWTRAIT_SCORE_CLIP"],
                     safety_model=os.environ["PAWTRAIT_SAFETY_MODEL"])
    return distributed(local, request) if mode == "distributed" else local


def settings_env(settings: Settings) -> dict[str, str]:
    """`settings` as the environment variables a Pawtrait process (CLI, worker, bot) reads."""
    values = dict(os.environ)
    values.update(settings.extra)
    values.update(
        PAWTRAIT_DATA_DIR=str(settings.data_dir),
        PAWTRAIT_MODEL=settings.model,
        PAWTRAIT_VAE="",
        PAWTRAIT_DEVICE="cpu",
        PAWTRAIT_RESOLUTION=str(settings.resolution),
        PAWTRAIT_DATABASE_URL=settings.database or "",
        PAWTRAIT_FILES_URL=settings.files or "",
        # Several processes share two cores: OpenMP threads per process would thrash them.
        OMP_NUM_THREADS="1",
        # Tests send one /teach after another as fast as they can; the cooldown has its own test.
        PAWTRAIT_TEACH_COOLDOWN_S="0",
    )
    values.pop("DISCORD_TOKEN", None)
    return values


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    """The same configuration as environment variables, for subprocesses (CLI, workers)."""
    return settings_env(settings)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = await open_database(settings.database_url)
    yield database
    await database.close()


@pytest.fixture
def store(settings: Settings) -> FileStore:
    return file_store(settings)
