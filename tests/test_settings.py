"""Configuration: defaults, .env files, and one-line errors for bad values."""

from __future__ import annotations

import io
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bot.settings import BotSettings
from config.redaction import scrub_logs
from config.settings import DEFAULT_MODEL, DEFAULT_VAE, Settings, SettingsError, environment


def test_defaults_match_the_documented_ones() -> None:
    settings = Settings.from_env({})
    assert settings.data_dir == Path("data")
    assert settings.model == DEFAULT_MODEL
    assert settings.vae == DEFAULT_VAE
    assert settings.device == "auto"
    assert settings.max_photos_per_pet == 30
    assert settings.cuda_graphs and settings.compile and settings.compile_training
    assert settings.guidance_interval == (0.28, 5.42)
    # One host: the SQLite file and the files in the data folder.
    assert settings.database is None and settings.files is None
    assert settings.database_url.text == f"sqlite:///{(Path('data') / 'pawtrait.db').resolve()}"
    assert settings.host_id == socket.gethostname()
    assert settings.worker_timeout_s == 20.0
    assert settings.dtype == "auto" and settings.gpu_memory_gib is None  # the GPU's own precision, all its memory


def test_precision_and_a_memory_cap_can_be_forced() -> None:
    settings = Settings.from_env({"PAWTRAIT_DTYPE": "fp16", "PAWTRAIT_GPU_MEMORY_GIB": "12"})
    assert (settings.dtype, settings.gpu_memory_gib) == ("fp16", 12.0)
    assert Settings.from_env({"PAWTRAIT_GPU_MEMORY_GIB": "7.5"}).gpu_memory_gib == 7.5


def test_many_hosts_share_a_database_and_a_bucket() -> None:
    settings = Settings.from_env({
        "PAWTRAIT_DATA_DIR": "/srv/pawtrait",
        "PAWTRAIT_DATABASE_URL": "postgresql://pawtrait:secret@db.internal:5432/pawtrait",
        "PAWTRAIT_FILES_URL": "s3://pawtrait-files/prod",
        "PAWTRAIT_HOST_ID": "gpu-box-2",
        "PAWTRAIT_WORKER_TIMEOUT_S": "45",
    })
    assert settings.database_url.text == "postgresql://pawtrait:secret@db.internal:5432/pawtrait"
    assert settings.files == "s3://pawtrait-files/prod"
    assert (settings.host_id, settings.worker_timeout_s) == ("gpu-box-2", 45.0)
    assert Settings.from_env({"PAWTRAIT_DATABASE_URL": "sqlite:////srv/p.db"}).database_url.text == "sqlite:////srv/p.db"
    assert Settings.from_env({"PAWTRAIT_DATABASE_URL": "postgres://u:p@h/db"}).database == "postgres://u:p@h/db"


def test_the_guidance_interval_can_be_set_or_switched_off() -> None:
    assert Settings.from_env({"PAWTRAIT_GUIDANCE_INTERVAL": "0.5-3"}).guidance_interval == (0.5, 3.0)
    assert Settings.from_env({"PAWTRAIT_GUIDANCE_INTERVAL": "off"}).guidance_interval is None


def test_the_audit_log_is_kept_90_days_unless_configured() -> None:
    assert Settings.from_env({}).audit_days == 90
    assert Settings.from_env({"PAWTRAIT_AUDIT_DAYS": "0"}).audit_days == 0


def test_empty_vae_means_the_models_own() -> None:
    assert Settings.from_env({"PAWTRAIT_VAE": ""}).vae is None


def refusal(name: str, value: str) -> str:
    """The one-line error the settings give for `name`=`value` alone, as an operator reads it."""
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    return str(caught.value)


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
        ("PAWTRAIT_DATABASE_URL", "localhost:5432", "sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DATABASE"),
        ("PAWTRAIT_DATABASE_URL", "mysql://pawtrait@db/pawtrait", "sqlite:///PATH or postgresql://"),
        ("PAWTRAIT_FILES_URL", "s3:///prefix", "s3://BUCKET/PREFIX"),
        ("PAWTRAIT_FILES_URL", "gs://bucket/prefix", "s3://BUCKET/PREFIX"),
        ("PAWTRAIT_HOST_ID", "gpu box", "a name without spaces or ':'"),
        ("PAWTRAIT_HOST_ID", "gpu:2", "a name without spaces or ':'"),
        ("PAWTRAIT_WORKER_TIMEOUT_S", "soon", "seconds from 3 to 3600"),
        ("PAWTRAIT_WORKER_TIMEOUT_S", "1", "seconds from 3 to 3600"),
        ("PAWTRAIT_WORKER_TIMEOUT_S", "86400", "seconds from 3 to 3600"),
        ("PAWTRAIT_DTYPE", "fp32", "auto, bf16 or fp16"),
        ("PAWTRAIT_GPU_MEMORY_GIB", "12GB", "GiB from 4 to 1024"),
        ("PAWTRAIT_GPU_MEMORY_GIB", "2", "GiB from 4 to 1024"),
        ("PAWTRAIT_AUDIT_DAYS", "-1", "a whole number of days (0 = forever)"),
        ("PAWTRAIT_AUDIT_DAYS", "a year", "a whole number of days (0 = forever)"),
    ],
)
def test_a_bad_value_names_variable_value_and_what_is_allowed(name: str, value: str, allowed: str) -> None:
    message = refusal(name, value)
    assert name in message and repr(value) in message and allowed in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("PAWTRAIT_DATABASE_URL", "mysql://pawtrait:hunter2@db/pawtrait", "'mysql://pawtrait:***@db/pawtrait'"),
        ("PAWTRAIT_FILES_URL", "s3://AKIAEXAMPLE:hunter2@bucket/prefix", "'s3://AKIAEXAMPLE:***@bucket/prefix'"),
    ],
)
def test_a_bad_url_is_named_without_its_password(name: str, value: str, shown: str) -> None:
    message = refusal(name, value)
    assert message.startswith(f"{name}={shown} is not valid: expected ")
    assert "hunter2" not in message and "\n" not in message


def test_env_file_is_read_and_real_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PAWTRAIT_MAX_PHOTOS=12\nPAWTRAIT_DEVICE=cpu\n")
    monkeypatch.setenv("PAWTRAIT_DEVICE", "cuda")
    merged = environment(env_file)
    settings = Settings.from_env(merged)
    assert settings.max_photos_per_pet == 12
    assert settings.device == "cuda"


def start(tmp_path: Path, module: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1]), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_stops_start_up_with_one_line(tmp_path: Path) -> None:
    result = start(tmp_path, "cli.main", "doctor", PAWTRAIT_DEVICE="gpu")
    assert result.returncode == 2
    assert result.stderr.strip() == "pawtrait: PAWTRAIT_DEVICE='gpu' is not valid: expected auto, cuda or cpu"
    result = start(tmp_path, "cli.main", "doctor", PAWTRAIT_DATABASE_URL="mysql://pawtrait:hunter2@db/pawtrait")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "pawtrait: PAWTRAIT_DATABASE_URL='mysql://pawtrait:***@db/pawtrait' is not valid: expected empty (the SQLite "
        "file in the data folder), sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DATABASE"
    )
    assert not (tmp_path / "data").exists()  # stopped before touching anything


def test_a_worker_stops_start_up_with_one_line(tmp_path: Path) -> None:
    result = start(tmp_path, "engine.gpu.worker", PAWTRAIT_WORKER_TIMEOUT_S="1")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "pawtrait worker: PAWTRAIT_WORKER_TIMEOUT_S='1' is not valid: expected seconds from 3 to 3600 (e.g. 20)"
    )
    result = start(tmp_path, "engine.gpu.worker", PAWTRAIT_HOST_ID="gpu box 2")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "pawtrait worker: PAWTRAIT_HOST_ID='gpu box 2' is not valid: expected a name without spaces or ':'"
    )


def test_a_worker_told_to_use_a_gpu_that_is_not_there_says_so(tmp_path: Path) -> None:
    result = start(tmp_path, "engine.gpu.worker", "--gpu", "2", CUDA_VISIBLE_DEVICES="0,1")
    assert result.returncode == 1
    assert "there is no GPU 2 here: CUDA_VISIBLE_DEVICES shows 2 GPUs (0,1); count from 0" in result.stderr
    result = start(tmp_path, "engine.gpu.worker", "--gpu", "0", CUDA_VISIBLE_DEVICES="", PAWTRAIT_DEVICE="auto")
    assert result.returncode == 1 and "there is no GPU 0 here" in result.stderr
    assert not (tmp_path / "data").exists()  # stopped before touching anything


def test_the_discord_token_stays_with_the_bot_and_out_of_every_repr(tmp_path: Path) -> None:
    token = "MTIz.discord-token-value"
    env_file = tmp_path / ".env"
    env_file.write_text(f"DISCORD_TOKEN={token}\nPAWTRAIT_DATABASE_URL=postgresql://u:db-password@db/p\n")
    env = environment(env_file)
    settings = Settings.from_env(env)  # what a worker reads: the `.env` too
    assert "DISCORD_TOKEN" not in settings.extra
    bot = BotSettings.from_env(env)
    assert bot.token == token
    assert token not in repr(bot) and token not in repr(settings) and "db-password" not in repr(settings)


def test_log_records_never_hold_a_credential() -> None:
    password, token, key = "query-password", "MTIz.discord-token-value", "aws-secret-key-value"
    url = f"postgresql://pawtrait@db.internal/pawtrait?password={password}"
    env = {"PAWTRAIT_DATABASE_URL": url, "DISCORD_TOKEN": token, "AWS_SECRET_ACCESS_KEY": key}
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        scrub_logs(env)
        log = logging.getLogger("pawtrait.test")
        log.warning("connecting to %s with %s", url, token)
        log.warning("other URL: postgresql://someone:other-password@host/db")
        try:
            raise RuntimeError(f"refused: key {key}")
        except RuntimeError:
            log.exception("failed")
    finally:
        root.removeHandler(handler)
    written = out.getvalue()
    assert "password=***" in written and "someone:***@host" in written and "Traceback" in written
    for secret in (password, token, key, "other-password"):
        assert secret not in written
