"""`pawtrait doctor`: what is configured and available, and what `pawtrait bot` still needs."""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
from pathlib import Path

from engine.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="show configuration and hardware, and what the bot still needs",
        description="Print what Pawtrait sees: Python, torch and its device, bitsandbytes, the base model and "
        "VAE, the data folder and database, and whether a Discord token is set (never the token itself). "
        "Exits 1 when something `pawtrait bot` needs is missing.",
    )
    parser.set_defaults(run=run)


def _torch_line(device_setting: str) -> tuple[str, bool]:
    import torch

    from engine.device import describe, resolve_device

    try:
        device = resolve_device(device_setting)
    except RuntimeError as error:
        return f"torch {torch.__version__}: {error}", False
    return f"torch {torch.__version__} on {describe(device)}", True


def _bitsandbytes_line() -> str:
    import torch

    if not torch.cuda.is_available():
        return "not usable without a CUDA GPU: training falls back to plain AdamW (more memory)"
    try:
        import bitsandbytes as bnb

        param = torch.nn.Parameter(torch.ones(64, device="cuda"))
        optimizer = bnb.optim.AdamW8bit([param], lr=1e-3)
        param.grad = torch.ones_like(param)
        optimizer.step()
        return f"{bnb.__version__}, 8-bit AdamW works"
    except Exception as error:  # any failure means "not usable"; say why
        return f"not usable ({type(error).__name__}: {error}); training falls back to plain AdamW"


def _source_line(source: str | None, what: str) -> tuple[str, bool]:
    from engine.models import describe_source

    if source is None:
        return f"{what}: the base model's own", True
    kind = describe_source(source)
    if kind == "hub id":
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(source, "model_index.json"), str) or isinstance(
            try_to_load_from_cache(source, "config.json"), str
        )
        kind += " (in the local cache)" if cached else " (downloaded on first use)"
    return f"{what}: {source} - {kind}", kind != "missing"


def _data_dir_line(data_dir: Path) -> tuple[str, bool]:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_dir):
            pass
    except OSError as error:
        return f"data folder: {data_dir.resolve()} - not writable ({error.strerror})", False
    return f"data folder: {data_dir.resolve()} - writable", True


async def _database_line(settings: Settings) -> str:
    from storage.db import connect, latest_version, schema_version

    db = await connect(settings.db_path)
    try:
        version = await schema_version(db)
    finally:
        await db.close()
    return f"database: {settings.db_path.resolve()} - schema version {version} of {latest_version()}"


def run(args: argparse.Namespace, settings: Settings) -> int:
    missing: list[str] = []
    print(f"Python {platform.python_version()}")
    line, ok = _torch_line(settings.device)
    print(line)
    if not ok:
        missing.append("a usable torch device (PAWTRAIT_DEVICE)")
    print(f"bitsandbytes: {_bitsandbytes_line()}")
    for source, what, variable in ((settings.model, "base model", "PAWTRAIT_MODEL"), (settings.vae, "VAE", "PAWTRAIT_VAE")):
        line, ok = _source_line(source, what)
        print(line)
        if not ok:
            missing.append(f"{what} ({variable} is neither a model folder nor a hub id)")
    line, ok = _data_dir_line(settings.data_dir)
    print(line)
    if ok:
        print(asyncio.run(_database_line(settings)))
    else:
        missing.append("a writable data folder (PAWTRAIT_DATA_DIR)")
    token_set = bool(settings.extra.get("DISCORD_TOKEN", "").strip())
    print(f"Discord token: {'set' if token_set else 'not set'}")
    if not token_set:
        missing.append("DISCORD_TOKEN (the bot token from the Discord developer portal)")
    if missing:
        print("missing for `pawtrait bot`: " + "; ".join(missing))
        return 1
    print("ready: `pawtrait bot` has what it needs")
    return 0
