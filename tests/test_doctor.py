"""`pawtrait doctor` tells an operator what is set up and what the bot (or a worker) still needs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from config.settings import Settings
from storage.connect import file_store

from cli_helpers import Completed, pawtrait
from conftest import distributed, settings_env
from services import free_port


def doctor(env: dict[str, str], cwd: Path, *args: str) -> Completed:
    return pawtrait("doctor", *args, env=env, cwd=cwd)


def line(output: str, start: str) -> str:
    [found] = [text for text in output.splitlines() if text.startswith(start)]
    return found


def test_without_a_token_it_says_so_and_fails(env: dict[str, str], settings: Settings, tmp_path: Path) -> None:
    result = doctor(env, tmp_path)
    assert result.returncode == 1
    assert "Discord token: not set" in result.stdout
    assert "missing for `pawtrait bot`: DISCORD_TOKEN" in result.stdout
    assert line(result.stdout, "audit log: ") == "audit log: lines deleted after 90 days (PAWTRAIT_AUDIT_DAYS)"
    assert "base model: " in result.stdout and "local folder" in result.stdout
    assert line(result.stdout, "database: ") == (
        f"database: sqlite+aiosqlite:///{(settings.data_dir / 'pawtrait.db').resolve()} - "
        "schema 0008, written and read back"
    )
    assert line(result.stdout, "file store: ") == f"file store: folder {settings.data_dir} - written and read back"
    assert "torch " in result.stdout and "CPU" in result.stdout
    assert line(result.stdout, "precision: ") == "precision: float32 (PAWTRAIT_DTYPE=auto)"
    # The probes leave nothing behind in the data folder.
    assert not (settings.data_dir / ".pawtrait-probe").exists()


def test_a_worker_needs_no_discord_token(env: dict[str, str], tmp_path: Path) -> None:
    result = doctor({**env, "PAWTRAIT_AUDIT_DAYS": "0"}, tmp_path, "--for", "worker")
    assert result.returncode == 0, result.stdout + result.stderr
    assert line(result.stdout, "audit log: ") == "audit log: kept forever (PAWTRAIT_AUDIT_DAYS=0)"
    assert "Discord token: not set" in result.stdout
    assert "ready: `pawtrait worker` has what it needs" in result.stdout


def test_with_everything_set_it_passes_and_never_prints_the_token(env: dict[str, str], tmp_path: Path) -> None:
    secret = "MTIz.secret-token-value"
    result = doctor({**env, "DISCORD_TOKEN": secret}, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Discord token: set" in result.stdout
    assert "ready: `pawtrait bot` has what it needs" in result.stdout
    assert secret not in result.stdout + result.stderr


def test_forced_precision_and_memory_cap_are_reported(env: dict[str, str], tmp_path: Path) -> None:
    result = doctor({**env, "PAWTRAIT_DTYPE": "fp16", "PAWTRAIT_GPU_MEMORY_GIB": "12"}, tmp_path, "--for", "worker")
    assert result.returncode == 0, result.stdout + result.stderr
    assert line(result.stdout, "precision: ") == (
        "precision: float32 (PAWTRAIT_DTYPE=fp16; it applies on a GPU, a CPU computes in float32)"
    )
    assert line(result.stdout, "GPU memory: ") == (
        "GPU memory: capped at 12 GiB (PAWTRAIT_GPU_MEMORY_GIB); no effect without a GPU"
    )


def test_a_missing_model_folder_is_reported(env: dict[str, str], tmp_path: Path) -> None:
    result = doctor({**env, "DISCORD_TOKEN": "x", "PAWTRAIT_MODEL": str(tmp_path / "nowhere")}, tmp_path)
    assert result.returncode == 1
    assert "base model" in result.stdout.split("missing for `pawtrait bot`:")[1]


async def test_postgresql_and_a_bucket_are_written_and_read_back_without_printing_secrets(
    settings: Settings, request: pytest.FixtureRequest, postgres_server, s3_server, tmp_path: Path
) -> None:
    shared = distributed(settings, request)
    result = await asyncio.to_thread(doctor, {**settings_env(shared), "DISCORD_TOKEN": "MTIz.token"}, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    database = line(result.stdout, "database: ")
    assert database.startswith(f"database: postgresql+asyncpg://pawtrait:***@127.0.0.1:{postgres_server.port}/")
    assert database.endswith(" - schema 0008, written and read back")
    bucket = shared.files.removeprefix("s3://").partition("/")[0]
    assert line(result.stdout, "file store: ") == (
        f"file store: s3://{bucket}/pawtrait at {s3_server.endpoint} - written and read back"
    )
    assert postgres_server.password not in output
    assert s3_server.secret_key not in output
    assert await file_store(shared).list("") == []  # the probe object was deleted again


async def test_an_unreachable_database_and_bucket_are_reported_in_plain_words(
    settings: Settings, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    shared = distributed(settings, request)
    password = "unreachable-db-password"
    db_port, s3_port = free_port(), free_port()
    env = {
        **settings_env(shared),
        "PAWTRAIT_DATABASE_URL": f"postgresql://pawtrait:{password}@127.0.0.1:{db_port}/pawtrait",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
    }
    result = await asyncio.to_thread(doctor, env, tmp_path, "--for", "worker")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    database = line(result.stdout, "database: ")
    assert database.startswith(f"database: postgresql+asyncpg://pawtrait:***@127.0.0.1:{db_port}/pawtrait - cannot reach it")
    assert "check that the database server is running" in database
    # Both are checked in one run, so the operator sees both problems at once.
    store = line(result.stdout, "file store: ")
    assert f"Could not reach the endpoint http://127.0.0.1:{s3_port}" in store
    assert "the connection was refused" in store and "Check AWS_ENDPOINT_URL" in store
    assert line(result.stdout, "missing for ") == (
        "missing for `pawtrait worker`: database (PAWTRAIT_DATABASE_URL); file store (PAWTRAIT_FILES_URL)"
    )
    assert password not in output and env["AWS_SECRET_ACCESS_KEY"] not in output


async def test_a_refused_login_and_a_missing_bucket_are_reported_in_plain_words(
    settings: Settings, request: pytest.FixtureRequest, postgres_server, tmp_path: Path
) -> None:
    shared = distributed(settings, request)
    env = {
        **settings_env(shared),
        "PAWTRAIT_DATABASE_URL": shared.database.replace(postgres_server.password, "wrong-password"),
        "PAWTRAIT_FILES_URL": "s3://no-such-bucket/pawtrait",
    }
    result = await asyncio.to_thread(doctor, env, tmp_path, "--for", "worker")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert 'not usable (password authentication failed for user "pawtrait")' in line(result.stdout, "database: ")
    assert "The bucket 'no-such-bucket' does not exist" in line(result.stdout, "file store: ")
    assert "wrong-password" not in output and env["AWS_SECRET_ACCESS_KEY"] not in output


async def test_a_password_in_the_query_string_is_never_printed(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """libpq's `?password=` form, which SQLAlchemy's hide_password leaves in."""
    password = "query-string-password"
    url = f"postgresql://pawtrait@127.0.0.1:{free_port()}/pawtrait?password={password}"
    result = await asyncio.to_thread(doctor, {**settings_env(settings), "PAWTRAIT_DATABASE_URL": url}, tmp_path,
                                     "--for", "worker")
    output = result.stdout + result.stderr + caplog.text
    assert result.returncode == 1, output
    assert "password=***" in line(result.stdout, "database: ") and "cannot reach it" in line(result.stdout, "database: ")
    assert password not in output


async def test_a_buckets_local_copies_and_their_limit_are_shown(
    settings: Settings, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    shared = distributed(settings, request)
    env = {**settings_env(shared), "PAWTRAIT_CACHE_GIB": "2.5", "PAWTRAIT_CACHE_SWEEP_S": "300"}
    result = await asyncio.to_thread(doctor, env, tmp_path, "--for", "worker")
    assert line(result.stdout, "local copies: ") == (
        "local copies: 0.00 GiB of at most 2.5 GiB (PAWTRAIT_CACHE_GIB), least recently used dropped first; "
        "copies of deleted files dropped every 300 s (PAWTRAIT_CACHE_SWEEP_S)"
    )
