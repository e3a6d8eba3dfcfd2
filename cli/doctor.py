"""`pawtrait doctor`: what is configured and available, and what `pawtrait bot` still needs."""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from config.redaction import known_secrets, scrub
from config.settings import Settings, environment

if TYPE_CHECKING:
    from storage.files import S3Files


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="show configuration and hardware, and what the bot still needs",
        description="Print what Pawtrait sees: Python, torch and its device, bitsandbytes, the base model and "
        "VAE, the data folder, the database and the file store (each written to and read back; passwords "
        "and keys are never printed), and whether a Discord token is set (never the token itself). "
        "Exits 1 when something the chosen role needs is missing.",
    )
    parser.add_argument(
        "--for", dest="role", choices=("bot", "worker"), default="bot",
        help="what this host runs: `pawtrait bot` (default) or only `pawtrait worker`, which needs no Discord token",
    )
    parser.set_defaults(run=run)


def _torch_lines(settings: Settings) -> tuple[list[str], bool]:
    """torch and its device; the precision and memory the engine will use there."""
    import torch

    from engine.gpu.device import PrecisionUnavailable, compute_dtype, describe, limit_gpu_memory, resolve_device

    try:
        device = resolve_device(settings.device)
    except RuntimeError as error:
        return [f"torch {torch.__version__}: {error}"], False
    limit_gpu_memory(device, settings.gpu_memory_gib)
    lines = [f"torch {torch.__version__} on {describe(device)}"]
    try:
        dtype = str(compute_dtype(device, settings.dtype)).removeprefix("torch.")
    except PrecisionUnavailable as error:
        return [*lines, f"precision: {error}"], False
    forced = "" if device.type == "cuda" or settings.dtype == "auto" else "; it applies on a GPU, a CPU computes in float32"
    lines.append(f"precision: {dtype} (PAWTRAIT_DTYPE={settings.dtype}{forced})")
    if settings.gpu_memory_gib is not None:
        lines.append(
            f"GPU memory: capped at {settings.gpu_memory_gib:g} GiB (PAWTRAIT_GPU_MEMORY_GIB)"
            + ("" if device.type == "cuda" else "; no effect without a GPU")
        )
    return lines, True


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
    except Exception as error:  # noqa: BLE001 - any failure means "not usable"; say why
        return f"not usable ({type(error).__name__}: {error}); training falls back to plain AdamW"


def _source_line(source: str | None, what: str) -> tuple[str, bool]:
    from engine.gpu.models import describe_source

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


async def _storage_lines(settings: Settings) -> list[tuple[str, bool]]:
    """The database and the file store, each opened, written to and read back."""
    from storage.connect import open_storage
    from storage.db import DatabaseUnavailable, current_revision
    from storage.files import FileStoreError, S3Files
    from storage.leases import release, try_acquire

    lines = []
    storage = open_storage(settings)
    where = settings.database_url.describe()
    try:
        db = (await storage.open()).db
    except (DatabaseUnavailable, ValueError) as error:
        lines.append((f"database: {where} - not usable: {_scrub(str(error), settings)}", False))
    except Exception as error:  # noqa: BLE001 - unreachable, refused login, no such database ...
        lines.append((f"database: {where} - {_database_problem(error, settings)}", False))
    else:
        try:
            probe = f"doctor-probe:{settings.host_id}"
            ok = await try_acquire(db, probe, "doctor", 30.0)
            await release(db, probe, "doctor")
            lines.append((f"database: {db.describe()} - schema {await current_revision(db)}, "
                          + ("written and read back" if ok else "probe row could not be written"), ok))
        except Exception as error:  # noqa: BLE001 - report any failure in plain words
            lines.append((f"database: {db.describe()} - {_database_problem(error, settings)}", False))
        finally:
            await storage.close()
    # The file store is checked even when the database is not usable: the operator sees both problems at once.
    try:
        store = storage.files
    except (FileStoreError, ValueError) as error:
        lines.append((f"file store: not usable: {error}", False))
        return lines
    try:
        await store.probe()
        lines.append((f"file store: {store.describe()} - written and read back", True))
    except (FileStoreError, OSError) as error:
        lines.append((f"file store: {store.describe()} - not usable: {error}", False))
    if isinstance(store, S3Files):
        lines.append((await asyncio.to_thread(_copies_line, store, settings), True))
    return lines


def _copies_line(store: S3Files, settings: Settings) -> str:
    """How much of the bucket this host keeps as local copies, and what bounds it."""
    used = store.cache.used_bytes() / 2**30
    return (
        f"local copies: {used:.2f} GiB of at most {settings.cache_gib:g} GiB (PAWTRAIT_CACHE_GIB), least recently "
        f"used dropped first; copies of deleted files dropped every {settings.cache_sweep_s:g} s (PAWTRAIT_CACHE_SWEEP_S)"
    )


def _scrub(text: str, settings: Settings) -> str:
    return scrub(text, known_secrets(settings.extra) + settings.database_url.passwords())


def _database_problem(error: BaseException, settings: Settings) -> str:
    """Why the database cannot be used, in plain words, without the password."""
    from storage.db import is_disconnect

    cause = getattr(error, "orig", None) or error  # the driver's own message, without SQLAlchemy's wrapping
    reason = _scrub(str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__, settings)
    if is_disconnect(error):
        return (f"cannot reach it ({reason}); check that the database server is running and that the host and "
                "port in PAWTRAIT_DATABASE_URL are right")
    return f"not usable ({reason}); check the user, password and database name in PAWTRAIT_DATABASE_URL"


def _audit_line(days: int) -> str:
    if days == 0:
        return "kept forever (PAWTRAIT_AUDIT_DAYS=0)"
    return f"lines deleted after {days} day{'s' * (days != 1)} (PAWTRAIT_AUDIT_DAYS)"


def run(args: argparse.Namespace, settings: Settings) -> int:
    worker_needs: list[str] = []
    print(f"Python {platform.python_version()}")
    lines, ok = _torch_lines(settings)
    print("\n".join(lines))
    if not ok:
        worker_needs.append("a usable torch device and precision (PAWTRAIT_DEVICE, PAWTRAIT_DTYPE)")
    print(f"bitsandbytes: {_bitsandbytes_line()}")
    for source, what, variable in ((settings.model, "base model", "PAWTRAIT_MODEL"), (settings.vae, "VAE", "PAWTRAIT_VAE")):
        line, ok = _source_line(source, what)
        print(line)
        if not ok:
            worker_needs.append(f"{what} ({variable} is neither a model folder nor a hub id)")
    # Scores help choose a checkpoint; a worker without their models trains on without them.
    if settings.scores:
        for source, what in ((settings.score_dino, "scores, DINO"), (settings.score_clip, "scores, CLIP")):
            line, ok = _source_line(source, what)
            print(line + ("" if ok else " (trainings go on without scores)"))
    else:
        print("checkpoint scores: off (PAWTRAIT_SCORES)")
    # Without its classifier a worker paints nothing: pictures are never posted unscreened.
    if settings.safety:
        line, ok = _source_line(settings.safety_model, "picture safety")
        print(line + ("" if ok else " (the worker refuses to paint until it can screen)"))
        if not ok:
            worker_needs.append("the picture safety model (PAWTRAIT_SAFETY_MODEL is neither a model folder nor a hub id)")
    else:
        print("picture safety: OFF (PAWTRAIT_SAFETY=off): pictures are posted unscreened and photos of people are "
              "trained on; for private servers only")
    shared_needs: list[str] = []
    line, ok = _data_dir_line(settings.data_dir)
    print(line)
    if ok:
        for line, ok in asyncio.run(_storage_lines(settings)):
            print(line)
            if not ok:
                what = line.partition(":")[0]
                variable = "PAWTRAIT_DATABASE_URL" if what == "database" else "PAWTRAIT_FILES_URL"
                shared_needs.append(f"{what} ({variable})")
    else:
        shared_needs.append("a writable data folder (PAWTRAIT_DATA_DIR)")
    print(f"audit log: {_audit_line(settings.audit_days)}")
    token_set = bool(environment().get("DISCORD_TOKEN", "").strip())
    print(f"Discord token: {'set' if token_set else 'not set'}")
    needs = shared_needs + worker_needs
    if args.role == "bot":
        if settings.workers == "0":
            needs = list(shared_needs)  # the workers run on other hosts
        if not token_set:
            needs.append("DISCORD_TOKEN (the bot token from the Discord developer portal)")
    command = f"`pawtrait {args.role}`"
    if needs:
        print(f"missing for {command}: " + "; ".join(needs))
        return 1
    print(f"ready: {command} has what it needs")
    return 0
