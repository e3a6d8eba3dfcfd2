"""What a training step costs outside the optimizer step: the worker's between-step work, timed.

    python benchmarks/step_overhead.py --out step_overhead.json              # GPU, full-size random SDXL
    python benchmarks/step_overhead.py --cpu --tiny                          # a dry run on the CPU
    python benchmarks/step_overhead.py --tree OLD_CHECKOUT --cpu --tiny      # the same against another tree

It runs a real training job through the worker's own `Executor` (what `python -m engine.gpu.worker`
runs) over a real queue, SQLite by default (`--database URL` for PostgreSQL), with the worker's
heartbeat beside it, and replaces only the optimizer step (`LoraTrainer.train_step`) by a sleep of
`--step-ms` (the GPU busy). Everything between two steps is what the product does: the cancel
check, the between-step look at the queue, progress, checkpoints, and the hops to the event loop
and the database they make. The gap from one step's end to the next step's start is that overhead.

It uses only interfaces every tree since issue 26 item 1 has, so `--tree` can time an older
checkout with the same script: the figure before and after a change.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import inspect
import io
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("step_overhead.json"))
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the Pawtrait checkout to time (default: this script's)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of the training job")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--step-ms", type=float, default=190.0,
                        help="the stubbed optimizer step (default: an H200's compiled fast-mode step, docs/BENCHMARKS.md)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU")
    parser.add_argument("--tiny", nargs="?", type=Path, const=Path(), metavar="MODEL_DIR",
                        help="the tiny random SDXL (built in a temporary folder unless given) instead of full size")
    parser.add_argument("--resolution", type=int, help="default: 64 with --tiny, else 1024")
    parser.add_argument("--database", help="a PostgreSQL URL (default: a fresh SQLite file, the one-host install)")
    return parser.parse_args()


ARGS = parse_args()
sys.path[:0] = [str(ARGS.tree.resolve()), str(ARGS.tree.resolve() / "benchmarks")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from sqlalchemy import event  # noqa: E402

from config.settings import Settings  # noqa: E402
from engine.gpu.models import BaseModel, load_base_model  # noqa: E402
from engine.gpu.training.loop import LoraTrainer  # noqa: E402
from engine.gpu.worker import executor as executor_module  # noqa: E402
from engine.usecases.training import TrainingParams, create_run  # noqa: E402
from storage import jobs, keys, workers  # noqa: E402
from storage.connect import open_storage  # noqa: E402
from storage.files import DataDir  # noqa: E402
from storage.pets import LOCAL_GUILD, create_pet  # noqa: E402
from storage.photos import insert_photo  # noqa: E402
from storage.wakeup import open_wakeup  # noqa: E402

HEARTBEAT_S = 2.0  # the worker's (engine/gpu/worker/scheduler.py)
WORKER = "bench:0"


class StepClock:
    """Wraps the stubbed optimizer step: when each step started and ended (training thread)."""

    def __init__(self, step_s: float, device: torch.device, statements: list[int]) -> None:
        self.step_s, self.device, self.statements = step_s, device, statements
        self.spans: list[tuple[int, float, float]] = []  # (step, start, end)
        self.statements_at = (0, 0)  # SQL statements so far at the first step's start and the last step's end

    def install(self) -> None:
        clock = self

        def train_step(trainer: LoraTrainer, step: int) -> torch.Tensor:
            started = time.perf_counter()
            first = clock.statements_at[0] if clock.spans else clock.statements[0]
            time.sleep(clock.step_s)  # the GPU busy; the host thread waits, as on a synchronising step
            clock.spans.append((step, started, time.perf_counter()))
            clock.statements_at = (first, clock.statements[0])
            return torch.zeros((), device=clock.device)

        LoraTrainer.train_step = train_step  # type: ignore[method-assign]

    def gaps(self, checkpoint_every: int) -> tuple[list[float], list[float]]:
        """Seconds from each step's end to the next one's start: (plain steps, steps that checkpointed)."""
        plain, checkpoints = [], []
        for (step, _, ended), (_, started, _) in zip(self.spans, self.spans[1:]):
            (checkpoints if (step + 1) % checkpoint_every == 0 else plain).append(started - ended)
        return plain, checkpoints


async def pet_with_photos(db, store, size: int, count: int = 5):
    pet = await create_pet(db, LOCAL_GUILD, "bench", "Thor", "cat")
    rng = np.random.default_rng(0)
    for index in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        key = keys.photo(pet.id, f"prepared-{index}.png")
        await store.put_bytes(key, buffer.getvalue())
        await insert_photo(db, pet.id, sha256=hashlib.sha256(pixels.tobytes()).hexdigest(), phash="0" * 16,
                           original_name=f"{index}.png", original_path=key, prepared_path=key, width=size,
                           height=size, crop=(0, 0, size), added_by="bench")
    return pet


async def heartbeat(db, executor) -> None:
    """The worker's heartbeat chore (engine/gpu/worker/process.py), every HEARTBEAT_S."""
    while True:
        running = set(executor.running)
        executor.still_held(running, await jobs.heartbeat(db, WORKER, running))
        await workers.beat(db, WORKER)
        await asyncio.sleep(HEARTBEAT_S)


async def measure(base: BaseModel, settings: Settings) -> dict:
    db, store = await open_storage(settings)
    statements = [0]
    event.listen(db.engine.sync_engine, "before_cursor_execute", lambda *_: statements.__setitem__(0, statements[0] + 1))
    await workers.register(db, WORKER, "bench", base.device.type)
    pet = await pet_with_photos(db, store, settings.resolution)
    params = TrainingParams(steps=ARGS.steps, checkpoint_every=ARGS.checkpoint_every, validate_every=0,
                            resolution=settings.resolution, gradient_accumulation=1, compile=False)
    run_id = await create_run(db, store, pet, params)
    await jobs.submit_job(db, settings, "train", LOCAL_GUILD, "bench", {"run_id": run_id, "pet_id": pet.id}, run_id)
    extra = {}
    wakeup = None
    if "wakeup" in inspect.signature(executor_module.Executor).parameters:  # trees that listen for wake-ups mid-job
        wakeup = extra["wakeup"] = open_wakeup(db)
    executor = executor_module.Executor(settings, db, store, DataDir(settings.data_dir), base, WORKER, **extra)
    clock = StepClock(ARGS.step_ms / 1000, base.device, statements)
    clock.install()
    beating = asyncio.create_task(heartbeat(db, executor))
    job = await jobs.claim_next_job(db, WORKER)
    await workers.set_state(db, WORKER, "busy", job.id)
    done = await executor.run(job)
    steps_seen = len(clock.spans)
    during = clock.statements_at[1] - clock.statements_at[0]
    beating.cancel()
    if wakeup is not None:
        await wakeup.close()
    await db.close()
    if done is None or done.status != "succeeded" or not clock.spans:
        raise SystemExit(f"the training did not succeed: {done and (done.status, done.error)}")
    plain, checkpoints = clock.gaps(ARGS.checkpoint_every)
    ms = [gap * 1000 for gap in plain]
    wall = clock.spans[-1][2] - clock.spans[0][1]
    return {
        "steps": steps_seen,
        "overhead_ms_per_step_mean": statistics.fmean(ms),
        "overhead_ms_per_step_median": statistics.median(ms),
        "overhead_ms_per_step_p90": statistics.quantiles(ms, n=10)[-1],
        "overhead_ms_per_step_max": max(ms),
        "checkpoint_gap_ms_mean": statistics.fmean(checkpoints) * 1000 if checkpoints else None,
        "overhead_ms_per_step_all_gaps": (wall - steps_seen * ARGS.step_ms / 1000) / max(steps_seen - 1, 1) * 1000,
        # Every SQL statement while the steps ran (the job's, the chores', the state's refreshes), per step.
        "statements_per_step": during / steps_seen,
    }


def build_base(work: Path, device: torch.device) -> tuple[BaseModel, str]:
    if ARGS.tiny is not None:
        from engine.gpu.tiny_model import make_tiny_model

        folder = ARGS.tiny if ARGS.tiny != Path() else make_tiny_model(work / "tiny-sdxl")
        return load_base_model(Settings(model=str(folder), vae=None, device=device.type)), str(folder)
    from train_sdxl import build_base as full_size  # random SDXL-base-1.0 on the GPU

    return full_size(work / "tokenizer"), "random SDXL-base-1.0"


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(tempfile.mkdtemp(prefix="pawtrait-step-overhead-"))
    device = torch.device("cpu" if ARGS.cpu else "cuda")
    resolution = ARGS.resolution or (64 if ARGS.tiny is not None else 1024)
    base, model = build_base(work, device)
    settings = Settings(data_dir=work / "data", model=model, vae=None, device=device.type, resolution=resolution,
                        scores=False, safety=False, compile_training=False, database=ARGS.database)
    figures = asyncio.run(measure(base, settings))
    commit = None
    if (ARGS.tree / ".git").exists():
        import subprocess

        commit = subprocess.run(["git", "-C", str(ARGS.tree), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip() or None
    result = {"card": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)",
              "torch": torch.__version__, "tree": str(ARGS.tree), "commit": commit,
              "database": "postgresql" if ARGS.database else "sqlite",
              "args": {k: str(v) for k, v in vars(ARGS).items()}, **figures}
    ARGS.out.write_text(json.dumps(result, indent=2))
    print(f"{result['card']}, {result['database']}, tree {ARGS.tree} ({commit or 'no git'}), "
          f"stub step {ARGS.step_ms:.0f} ms, {figures['steps']} steps")
    print(f"overhead outside the optimizer step: mean {figures['overhead_ms_per_step_mean']:.2f} ms, "
          f"median {figures['overhead_ms_per_step_median']:.2f}, p90 {figures['overhead_ms_per_step_p90']:.2f}, "
          f"max {figures['overhead_ms_per_step_max']:.2f} ms per step")
    checkpoint_ms = figures["checkpoint_gap_ms_mean"]
    print(f"all gaps, checkpoints included: {figures['overhead_ms_per_step_all_gaps']:.2f} ms per step; "
          f"a checkpoint's gap {checkpoint_ms if checkpoint_ms is None else round(checkpoint_ms, 1)} ms; "
          f"{figures['statements_per_step']:.1f} SQL statements per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
