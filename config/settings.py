"""Configuration for the engine and storage, read from the environment and a `.env` file.

Every variable is listed in `.env.example`. A bad value stops start-up with one line that
names the variable, the value and what is allowed (`SettingsError`), because a typo in a
deployment should fail loudly at once, not half way through a training run.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TypeVar

from dotenv import dotenv_values

from config.database_url import DatabaseUrl
from config.redaction import scrub

T = TypeVar("T")

# Read by the bot alone (bot.settings): never kept in `Settings.extra`, whose variables reach
# worker processes and the file store's client.
BOT_ONLY_VARIABLES = frozenset({"DISCORD_TOKEN"})

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_VAE = "madebyollin/sdxl-vae-fp16-fix"
# Guide only at SDXL noise levels in (0.28, 5.42]: Kynkäänniemi et al. 2024 (engine/gpu/generation/guidance.py).
DEFAULT_GUIDANCE_INTERVAL = (0.28, 5.42)
# Checkpoint scores: the models the DreamBooth paper measured subject fidelity and prompt fidelity with.
DEFAULT_SCORE_DINO = "facebook/dino-vits16"
DEFAULT_SCORE_CLIP = "openai/clip-vit-base-patch32"
# Pictures are screened before they are posted (engine/gpu/safety/checker.py says why this model).
DEFAULT_SAFETY_MODEL = "CompVis/stable-diffusion-safety-checker"


class SettingsError(ValueError):
    """A configuration value is invalid; the message is one line meant for the operator."""


def environment(env_file: str | os.PathLike[str] | None = ".env") -> dict[str, str]:
    """The process environment on top of the `.env` file (real variables win)."""
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ)
    return merged


def read(
    env: Mapping[str, str],
    name: str,
    default: T,
    parse: Callable[[str], T],
    allowed: str,
    *,
    shown: Callable[[str], str] = repr,
) -> T:
    """One variable: missing or empty gives `default`, otherwise `parse` must accept it.

    `shown` writes the bad value into the error (URLs: without their password).
    """
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw.strip())
    except (ValueError, TypeError):
        raise SettingsError(f"{name}={shown(raw)} is not valid: expected {allowed}") from None


def without_password(raw: str) -> str:
    """repr() of a URL without its password (user:password@ or ?password=)."""
    return repr(scrub(raw))


def positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError(raw)
    return value


def non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(raw)
    return value


def bounded_float(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if not low <= value <= high:
            raise ValueError(raw)
        return value

    return parse


def choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in options:
            raise ValueError(raw)
        return raw.lower()

    return parse


def boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


@dataclass(frozen=True)
class Settings:
    """What the engine, the storage and the worker need to know about this installation."""

    data_dir: Path = Path("data")
    model: str = DEFAULT_MODEL
    vae: str | None = DEFAULT_VAE
    device: str = "auto"
    dtype: str = "auto"  # auto (bf16 where the GPU has it, else fp16), bf16 or fp16; CPUs compute in fp32
    gpu_memory_gib: float | None = None  # cap this process's GPU memory, e.g. to see what a 12 GB card gets
    resolution: int = 1024
    max_photos_per_pet: int = 30
    max_pets_per_user: int = 5
    max_queued_trainings_per_user: int = 1
    max_queued_generations_per_user: int = 3
    train_mode: str = "auto"
    generate_memory: str = "auto"
    compile: bool = True  # generation: shapes compiled ahead in the worker's idle time
    compile_training: bool = True  # training: the default run's step compiled ahead in the worker's idle time
    cuda_graphs: bool = True
    guidance_interval: tuple[float, float] | None = DEFAULT_GUIDANCE_INTERVAL
    workers: str = "auto"
    max_job_attempts: int = 3
    keep_generations_days: int = 0
    teach_cooldown_s: float = 15.0  # a member's next /teach waits this long after the last one started
    cache_gib: float = 20.0  # local copies of a bucket's objects kept on this host, least recently used first
    cache_sweep_s: float = 600.0  # how often a worker drops its copies of objects deleted on any host
    audit_days: int = 90  # the audit log's lines are deleted after this many days (0 = kept forever)
    database: str | None = field(default=None, repr=False)  # None: the SQLite file in the data folder; has a password
    files: str | None = None  # None: the data folder itself
    host_id: str = field(default_factory=socket.gethostname)
    worker_timeout_s: float = 20.0
    scores: bool = True  # DINO / CLIP-I / CLIP-T of every validation round (engine/gpu/scoring)
    score_dino: str = DEFAULT_SCORE_DINO
    score_clip: str = DEFAULT_SCORE_CLIP
    safety: bool = True  # pictures screened before posting, photos of people refused (engine/gpu/safety)
    safety_model: str = DEFAULT_SAFETY_MODEL
    extra: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def database_url(self) -> DatabaseUrl:
        """PAWTRAIT_DATABASE_URL (parsed on first use, once), or the SQLite file `pawtrait.db` in the data folder."""
        return DatabaseUrl.parse(self.database) if self.database else DatabaseUrl.sqlite_file(self.data_dir / "pawtrait.db")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = environment() if env is None else env
        workers = read(env, "PAWTRAIT_WORKERS", "auto", _workers, "'auto' or a number of workers >= 0")
        return cls(
            data_dir=read(env, "PAWTRAIT_DATA_DIR", Path("data"), Path, "a folder path"),
            model=read(env, "PAWTRAIT_MODEL", DEFAULT_MODEL, str, "a hub id or a local folder"),
            vae=_vae(env),
            device=read(env, "PAWTRAIT_DEVICE", "auto", choice("auto", "cuda", "cpu"), "auto, cuda or cpu"),
            dtype=read(env, "PAWTRAIT_DTYPE", "auto", choice("auto", "bf16", "fp16"), "auto, bf16 or fp16"),
            gpu_memory_gib=read(
                env, "PAWTRAIT_GPU_MEMORY_GIB", None, _memory_gib,
                "empty (the whole GPU) or GiB from 4 to 1024, e.g. 12 to see what a 12 GB card gets",
            ),
            resolution=read(env, "PAWTRAIT_RESOLUTION", 1024, _resolution, "a multiple of 64 from 64 to 2048"),
            max_photos_per_pet=read(env, "PAWTRAIT_MAX_PHOTOS", 30, positive_int, "a whole number >= 1"),
            max_pets_per_user=read(env, "PAWTRAIT_MAX_PETS_PER_USER", 5, positive_int, "a whole number >= 1"),
            max_queued_trainings_per_user=read(
                env, "PAWTRAIT_MAX_QUEUED_TRAININGS", 1, positive_int, "a whole number >= 1"
            ),
            max_queued_generations_per_user=read(
                env, "PAWTRAIT_MAX_QUEUED_GENERATIONS", 3, positive_int, "a whole number >= 1"
            ),
            train_mode=read(env, "PAWTRAIT_TRAIN_MODE", "auto", choice("auto", "fast", "lean"), "auto, fast or lean"),
            generate_memory=read(
                env, "PAWTRAIT_GENERATE_MEMORY", "auto", choice("auto", "full", "low"), "auto, full or low"
            ),
            compile=read(env, "PAWTRAIT_COMPILE", True, boolean, "true or false"),
            compile_training=read(env, "PAWTRAIT_COMPILE_TRAINING", True, boolean, "true or false"),
            cuda_graphs=read(env, "PAWTRAIT_CUDA_GRAPHS", True, boolean, "true or false"),
            guidance_interval=read(
                env, "PAWTRAIT_GUIDANCE_INTERVAL", DEFAULT_GUIDANCE_INTERVAL, _guidance_interval,
                "'off' or two noise levels LOW-HIGH with 0 <= LOW < HIGH, e.g. 0.28-5.42",
            ),
            workers=workers,
            max_job_attempts=read(env, "PAWTRAIT_MAX_JOB_ATTEMPTS", 3, positive_int, "a whole number >= 1"),
            keep_generations_days=read(
                env, "PAWTRAIT_KEEP_GENERATIONS_DAYS", 0, non_negative_int, "a whole number of days (0 = forever)"
            ),
            teach_cooldown_s=read(
                env, "PAWTRAIT_TEACH_COOLDOWN_S", 15.0, bounded_float(0, 3600), "seconds from 0 to 3600 (0 = none)"
            ),
            cache_gib=read(env, "PAWTRAIT_CACHE_GIB", 20.0, bounded_float(0.01, 100_000), "GiB above 0 (e.g. 20)"),
            cache_sweep_s=read(
                env, "PAWTRAIT_CACHE_SWEEP_S", 600.0, bounded_float(1, 86_400), "seconds from 1 to 86400 (e.g. 600)"
            ),
            audit_days=read(env, "PAWTRAIT_AUDIT_DAYS", 90, non_negative_int, "a whole number of days (0 = forever)"),
            database=read(
                env, "PAWTRAIT_DATABASE_URL", None, _database_url,
                "empty (the SQLite file in the data folder), sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DATABASE",
                shown=without_password,
            ),
            files=read(
                env, "PAWTRAIT_FILES_URL", None, _files_url,
                "empty (the data folder) or s3://BUCKET/PREFIX (with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
                "and, for other providers than AWS, AWS_ENDPOINT_URL)",
                shown=without_password,
            ),
            host_id=read(env, "PAWTRAIT_HOST_ID", socket.gethostname(), _host_id, "a name without spaces or ':'"),
            worker_timeout_s=read(
                env, "PAWTRAIT_WORKER_TIMEOUT_S", 20.0, _timeout, "seconds from 3 to 3600 (e.g. 20)"
            ),
            scores=read(env, "PAWTRAIT_SCORES", True, boolean, "on or off"),
            score_dino=read(env, "PAWTRAIT_SCORE_DINO", DEFAULT_SCORE_DINO, _model_source, MODEL_SOURCE),
            score_clip=read(env, "PAWTRAIT_SCORE_CLIP", DEFAULT_SCORE_CLIP, _model_source, MODEL_SOURCE),
            safety=read(env, "PAWTRAIT_SAFETY", True, boolean, "on or off"),
            safety_model=read(env, "PAWTRAIT_SAFETY_MODEL", DEFAULT_SAFETY_MODEL, _model_source, MODEL_SOURCE),
            extra={name: value for name, value in env.items() if name not in BOT_ONLY_VARIABLES},
        )


def _memory_gib(raw: str) -> float:
    gib = float(raw)
    if not 4 <= gib <= 1024:
        raise ValueError(raw)
    return gib


def _vae(env: Mapping[str, str]) -> str | None:
    # Unlike other variables, an explicitly empty PAWTRAIT_VAE means "the model's own VAE".
    if "PAWTRAIT_VAE" not in env:
        return DEFAULT_VAE
    return env["PAWTRAIT_VAE"].strip() or None


MODEL_SOURCE = "a hub id like owner/name or a local folder (/path, ./path or ~/path)"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _model_source(raw: str) -> str:
    """A hub id or something that is plainly a path; whether it loads is found out when it is used."""
    if _HUB_ID.match(raw) or raw.startswith(("/", "./", "../", "~")) or Path(raw).is_dir():
        return raw
    raise ValueError(raw)


def _guidance_interval(raw: str) -> tuple[float, float] | None:
    if raw.lower() in ("off", "none", "false", "0"):
        return None
    low, high = (float(part) for part in raw.split("-"))
    if not 0 <= low < high:
        raise ValueError(raw)
    return low, high


def _database_url(raw: str) -> str:
    DatabaseUrl.parse(raw)  # refused here, naming the variable, rather than when the database is opened
    return raw


def _files_url(raw: str) -> str:
    bucket = raw.removeprefix("s3://").partition("/")[0]
    if not raw.startswith("s3://") or not bucket or "@" in bucket:  # keys belong in AWS_* variables
        raise ValueError(raw)
    return raw


def _host_id(raw: str) -> str:
    if any(c.isspace() or c == ":" for c in raw):
        raise ValueError(raw)
    return raw


def _timeout(raw: str) -> float:
    value = float(raw)
    if not 3 <= value <= 3600:
        raise ValueError(raw)
    return value


def _resolution(raw: str) -> int:
    value = int(raw)
    if value % 64 or not 64 <= value <= 2048:
        raise ValueError(raw)
    return value


def _workers(raw: str) -> str:
    if raw.lower() == "auto":
        return "auto"
    return str(non_negative_int(raw))
