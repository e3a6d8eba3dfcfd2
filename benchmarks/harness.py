"""What the benchmarks share: their common flags, the results file, phases run by name, wall time with
the device synchronised around the call, peak GPU memory, random pictures, a one-host installation
to drive the product through, and the printed tables.

CUDA work is asynchronous: an unsynchronised timing measures the launch, not the work. The models
(random SDXL-base-1.0, or the tiny model of a dry run) are built by sdxl_random.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from config.database_url import DatabaseUrl
from storage import keys
from storage.db import Database, open_database
from storage.files import DataDir, FileStore, LocalFiles
from storage.pets import LOCAL_GUILD, Pet, create_pet
from storage.photos import insert_photo

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
DRY_RUN_CARD = "CPU (dry run)"
T = TypeVar("T")


# --- command line -------------------------------------------------------------------------------


def parser(doc: str | None, out: str | None) -> argparse.ArgumentParser:
    """The script's parser, its docstring as the help, with `--out`: where the results JSON goes
    (`out` by default; None: only when asked)."""
    made = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    made.add_argument("--out", type=Path, default=None if out is None else Path(out),
                      help="write the results as JSON here" + (f" (default {out})" if out else ""))
    return made


def add_tiny_model(parser: argparse.ArgumentParser, help: str = "use this tiny model folder on the CPU instead (a dry run)") -> None:
    """`--tiny MODEL_DIR`: the product's tiny random SDXL on the CPU instead of full size on the GPU."""
    parser.add_argument("--tiny", type=Path, help=help)


def add_cpu_dry_run(parser: argparse.ArgumentParser, tiny_help: str) -> None:
    """`--cpu` and `--tiny` for the scripts that build their own small models: a dry run checks the
    script, not the cost."""
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (a dry run; no memory figure)")
    parser.add_argument("--tiny", action="store_true", help=tiny_help)


def add_resolution(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resolution", type=int, default=1024)


def selected(names: str, phases: Mapping[str, T]) -> list[tuple[str, T]]:
    """The phases a comma-separated list names, in its order; a name no phase has stops the run
    before any phase starts (a typo would otherwise cost the phases before it)."""
    chosen = [name for name in names.split(",") if name]
    unknown = [name for name in chosen if name not in phases]
    if unknown:
        raise SystemExit(f"unknown: {', '.join(unknown)} (known: {', '.join(phases)})")
    return [(name, phases[name]) for name in chosen]


# --- results ----------------------------------------------------------------------------------


def commit() -> str:
    """The short commit of the tree this benchmark runs from ("" outside a git checkout)."""
    found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return found.stdout.strip()


def today() -> str:
    return time.strftime("%Y-%m-%d")


def card(device: torch.device, cpu: str = DRY_RUN_CARD) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu


def provenance(device: torch.device) -> dict[str, str]:
    """What a GPU result was measured on and from which tree: figures of older trees sit beside them."""
    return {"card": card(device), "torch": torch.__version__, "commit": commit(), "date": today()}


class Results(dict):
    """The results of a run, written to `out` (when given) after each part, so that a run cut short
    still leaves what it measured."""

    def __init__(self, out: Path | None, **fields: object) -> None:
        super().__init__(fields)
        self.out = out

    def save(self) -> None:
        if self.out is not None:
            self.out.write_text(json.dumps(self, indent=2, default=str))


def failure(error: BaseException) -> str:
    """How a failed part is recorded: the others still run, and this says why it has no figures."""
    return f"{type(error).__name__}: {error}"


# --- timing and memory ----------------------------------------------------------------------------


def cpu_or_cuda(cpu: bool) -> torch.device:
    return torch.device("cpu" if cpu or not torch.cuda.is_available() else "cuda")


def sync(device: torch.device | None = None) -> None:
    """Wait for the GPU's queued work (nothing on the CPU)."""
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        torch.cuda.synchronize(device)


def timed(run: Callable[[], T], device: torch.device | None = None) -> tuple[float, T]:
    """Seconds `run()` takes, the device synchronised before and after, and what it returned."""
    sync(device)
    started = time.perf_counter()
    result = run()
    sync(device)
    return time.perf_counter() - started, result


def median_s(run: Callable[[], object], repeats: int, device: torch.device | None = None) -> float:
    """Median seconds of `repeats` synchronised calls."""
    return float(np.median([timed(run, device)[0] for _ in range(repeats)]))


def per_call_s(run: Callable[[], object], calls: int) -> float:
    """Seconds per call over `calls` calls back to back, synchronised around them all: what a loop of
    them costs when the host runs ahead of the GPU."""
    seconds, _ = timed(lambda: [run() for _ in range(calls)])
    return seconds / calls


def reset_peak(device: torch.device | None = None, *, empty_cache: bool = False) -> None:
    """Start measuring peak GPU memory from here; `empty_cache` also hands cached blocks back first
    (between configurations: a previous one's cache is not this one's memory)."""
    if not torch.cuda.is_available() or (device is not None and device.type != "cuda"):
        return
    torch.cuda.synchronize(device)
    if empty_cache:
        torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device | None = None) -> float:
    """Peak GPU memory allocated since the last `reset_peak`, in GiB (0 without a GPU)."""
    if not torch.cuda.is_available() or (device is not None and device.type != "cuda"):
        return 0.0
    return torch.cuda.max_memory_allocated(device) / GIB


def status_kib(pid: int, field: str) -> int:
    """A memory field of /proc/PID/status in KiB (VmRSS: resident now, VmHWM: its peak); 0 if gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith(field + ":")), 0)


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds between two of the database's timestamps (job and run rows); None if one is missing."""
    if start is None or end is None:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


# --- pictures -----------------------------------------------------------------------------------


def pictures(count: int, side: int, seed: int) -> list[Image.Image]:
    """`count` RGB pictures of random pixels, `side`² each (time and memory do not depend on content)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(count)]


def write_photos(folder: Path, count: int, side: int) -> list[Path]:
    """`pictures` saved as PNG files in `folder`: what a member's photos are to the intake and training."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, picture in enumerate(pictures(count, side, seed=0)):
        path = folder / f"{index}.png"
        picture.save(path)
        paths.append(path)
    return paths


def levels_apart(x: Image.Image, y: Image.Image) -> float:
    """Mean absolute difference of two pictures in 0-255 levels (0 = the same pixels)."""
    return float(np.abs(np.asarray(x, dtype=np.int16) - np.asarray(y, dtype=np.int16)).mean())


def mean_levels_apart(a: Sequence[Image.Image], b: Sequence[Image.Image]) -> float:
    """`levels_apart` of two picture lists, pair by pair, averaged."""
    return float(np.mean([levels_apart(x, y) for x, y in zip(a, b)]))


# --- a one-host installation ------------------------------------------------------------------------


async def embedded_install(folder: Path) -> tuple[Database, FileStore, DataDir]:
    """A one-host installation in `folder`: the SQLite file and the folder as the file store."""
    return await open_database(DatabaseUrl.sqlite_file(folder / "pawtrait.db")), LocalFiles(folder), DataDir(folder)


async def pet_with(db: Database, store: FileStore, photos: list[Path], res: int, name: str = "Thor") -> Pet:
    """A pet whose prepared photos are `photos`, put in the file store as the intake would."""
    pet = await create_pet(db, LOCAL_GUILD, "bench", name, "cat")
    for index, path in enumerate(photos):
        key = keys.photo(pet.id, f"{index}-crop.png")
        await store.put_file(key, path)
        await insert_photo(db, pet.id, sha256=str(index), phash="0", original_name="p", original_path=key,
                           prepared_path=key, width=res, height=res, crop=(0, 0, res), added_by="bench")
    return pet


# --- printed tables ---------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [f"| {' | '.join(header)} |", f"| {' | '.join('---' for _ in header)} |"]
    return "\n".join(lines + [f"| {' | '.join(row)} |" for row in rows])


def columns(*cells: tuple[object, str]) -> str:
    """One line of a fixed-width table: each value formatted with its spec (`"<22"`, `">9.3f"`)."""
    return "".join(format(value, spec) for value, spec in cells)
