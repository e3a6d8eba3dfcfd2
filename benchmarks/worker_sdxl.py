"""The GPU worker on a full-size SDXL (random weights): how long a generation waits mid-training, and memory.

    python benchmarks/worker_sdxl.py --out worker_results.json [--steps 40] [--generations 3]
    python benchmarks/worker_sdxl.py --tiny MODEL_DIR   # a dry run on the CPU with the tiny model

It drives the worker's own `Executor` (the code `python -m engine.gpu.worker` runs) over a real
SQLite queue and the data folder as the file store (the one-host installation): a training job runs; while it trains, generation jobs (1024², 30 steps,
guidance 5, the plain base model) are submitted one after another at arbitrary moments.
For each one it reports the wait (submitted -> started, from the job rows) against one
optimizer step of the training, and the generation's own time against the same request
run on an idle worker. Peak GPU memory (`torch.cuda.max_memory_allocated`) is measured
for the whole scenario twice: generations on the training's own resident SDXL (what the
worker does), and on a second copy of SDXL (what a separate generation process would cost).
The SDXL builder is the training benchmark's (`benchmarks/sdxl_random.py`'s `random_base`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness
from harness import embedded_install, peak_gib, pet_with, reset_peak, seconds_between
from sdxl_random import base_model

from config.settings import Settings
from engine.gpu.generation.generator import Generator
from engine.gpu.models import BaseModel
from engine.gpu.worker.executor import Executor
from engine.usecases.training import TrainingParams, create_run
from storage import jobs, runs
from storage.db import Database
from storage.files import FileStore
from storage.pets import LOCAL_GUILD, Pet


async def until_ended(db, job_id: int, training: asyncio.Task) -> jobs.Job | None:
    """The job once it ended; None if the training ended first and left it queued (nobody serves it then)."""
    while True:
        job = await jobs.get_job(db, job_id)
        if job.ended:
            return job
        if training.done() and job.status == "queued":
            return None
        await asyncio.sleep(0.02)


class PlanLog(logging.Handler):
    """The memory plan the training service logs ("run N: lean mode (why), ..."): the mode it chose."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        logging.getLogger("engine.gpu.training.service").addHandler(self)
        logging.getLogger("engine.gpu.training.service").setLevel(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        if " mode (" in (message := record.getMessage()):
            self.lines.append(message)

    def close(self) -> str | None:
        logging.getLogger("engine.gpu.training.service").removeHandler(self)
        super().close()
        return self.lines[-1] if self.lines else None


@dataclass
class Scenario:
    """One scenario's installation and worker: what its phases share."""

    name: str
    db: Database
    store: FileStore
    settings: Settings
    executor: Executor
    pet: Pet
    request: dict
    args: argparse.Namespace


async def phase_idle(scene: Scenario) -> dict:
    """The same request on an idle worker: the job's time and the Generator's share of it (the
    first one warms up and captures; the rest is storage, PNG encoding and previews)."""
    idle, files, painting = [], [], []
    paint = scene.executor.generator.generate

    def timed_paint(*args, **kwargs):
        result = paint(*args, **kwargs)
        painting.append(result.seconds)
        return result

    scene.executor.generator.generate = timed_paint  # type: ignore[method-assign]
    reset_peak(empty_cache=True)
    for _ in range(3):
        await jobs.submit_job(scene.db, scene.settings, "generate", LOCAL_GUILD, "bench", scene.request)
        done = await scene.executor.run(await jobs.claim_next_job(scene.db, "bench:0"))
        assert done.status == "succeeded", done.error
        idle.append(seconds_between(done.started_at, done.finished_at))
        files.append(done.result["files"][0])
    del scene.executor.generator.generate
    return {"idle": idle, "files": files, "painting": painting, "peak_gib": peak_gib()}


async def phase_training(scene: Scenario, idle_file: str) -> dict:
    """A training job, and generation jobs submitted one after another at arbitrary moments while it
    trains: each one's wait and run, its picture against the idle worker's, and the peak of both."""
    args = scene.args
    params = TrainingParams(
        steps=args.steps, checkpoint_every=args.steps, validate_every=0, resolution=args.resolution,
        mode=args.train_mode, prior_preservation=args.prior > 0, class_images=max(args.prior, 1),
    )
    run_id = await create_run(scene.db, scene.store, scene.pet, params)
    train_job = await jobs.submit_job(
        scene.db, scene.settings, "train", LOCAL_GUILD, "bench", {"run_id": run_id, "pet_id": scene.pet.id}, run_id
    )
    reset_peak(empty_cache=True)
    plans = PlanLog()
    training = asyncio.create_task(scene.executor.run(await jobs.claim_next_job(scene.db, "bench:0")))
    rng = random.Random(0)
    served = []
    while len(served) < args.generations and not training.done():
        if (await jobs.get_job(scene.db, train_job.id)).progress <= 0:
            await asyncio.sleep(0.05)
            continue
        await asyncio.sleep(rng.uniform(0.0, 1.0))  # an arbitrary moment within a step
        job = await jobs.submit_job(scene.db, scene.settings, "generate", LOCAL_GUILD, "bench", scene.request)
        done = await until_ended(scene.db, job.id, training)
        if done is None:
            break
        train_row = await jobs.get_job(scene.db, train_job.id)
        diff = None
        if done.result:
            diff = harness.levels_apart(*[Image.open(await scene.store.local_path(path))
                                          for path in (idle_file, done.result["files"][0])])
        served.append({
            "status": done.status,
            "mean_pixel_diff_vs_idle": diff,
            "wait_s": seconds_between(done.created_at, done.started_at),
            "run_s": seconds_between(done.started_at, done.finished_at),
            "total_s": seconds_between(done.created_at, done.finished_at),
            "training_still_running": train_row.status == "running",
        })
        print(scene.name, served[-1], flush=True)
    finished = await training
    both_gib = peak_gib()
    # The trainer's ETA counts its own step time only (not the generations it served): per step = ETA / steps left.
    progress = [e.data for e in await jobs.events_after(scene.db, jobs.START, [train_job.id]) if e.kind == "progress"]
    per_step = [p["eta_s"] / (p["total"] - p["step"]) for p in progress if p.get("eta_s") and p["step"] < p["total"]]
    run = await runs.get_run(scene.db, run_id)
    train_wall = seconds_between(run.started_at, run.finished_at)
    gen_time = sum(s["run_s"] for s in served)
    return {
        "training": {"status": finished.status, "error": finished.error, "steps": run.step, "wall_s": train_wall,
                     "wall_s_without_generations": train_wall - gen_time, "plan": plans.close(),
                     "prior_preservation_class_images": args.prior},
        "served_mid_training": served,
        "peak_gib_training_plus_generation": both_gib,
        "optimizer_step_s": per_step[-1] if per_step else None,
    }


async def scenario(
    name: str, base: BaseModel, gen_base: BaseModel, settings: Settings, photos: list[Path], args: argparse.Namespace
) -> dict:
    """The worker's Executor over its own installation; generations on `gen_base` (the training's
    own SDXL when it is `base`)."""
    db, store, data = await embedded_install(settings.data_dir / name)
    pet = await pet_with(db, store, photos, args.resolution)
    executor = Executor(settings, db, store, data, base, "bench:0")
    if gen_base is not base:
        executor.generator = Generator.from_settings(gen_base, settings)
    request = {"request": {"prompt": "a watercolor of a cat on a windowsill", "steps": args.gen_steps, "seed": 1}}
    scene = Scenario(name, db, store, settings, executor, pet, request, args)
    idle = await phase_idle(scene)
    training = await phase_training(scene, idle["files"][-1])
    await db.close()
    return {
        "scenario": name,
        "training": training["training"],
        "generator_memory_mode": executor.generator.memory,
        "generation_alone_s": idle["idle"][-1],
        "generation_first_s": idle["idle"][0],
        "idle_jobs_s": idle["idle"],
        "idle_generator_s": idle["painting"],
        "generation_alone_peak_gib": idle["peak_gib"],
        "served_mid_training": training["served_mid_training"],
        "peak_gib_training_plus_generation": training["peak_gib_training_plus_generation"],
        "optimizer_step_s": training["optimizer_step_s"],
    }


def print_table(results: harness.Results) -> None:
    print(f"\n{results['card']}, torch {results['torch']}")
    print(f"{'scenario':<12} {'peak GiB':>9} {'gen alone s':>12} {'step s':>7}  waits s (own run s)")
    for row in results["scenarios"]:
        waits = ", ".join(f"{s['wait_s']:.2f} ({s['run_s']:.2f})" for s in row["served_mid_training"])
        print(f"{row['scenario']:<12} {row['peak_gib_training_plus_generation']:>9.2f} {row['generation_alone_s']:>12.2f} "
              f"{row['optimizer_step_s'] or 0:>7.2f}  {waits}")
        print(f"  training {row['training']['status']} {row['training']['error'] or ''}; {row['training']['plan']}; "
              f"generations in {row['generator_memory_mode']} memory mode")


def main() -> int:
    parser = harness.parser(__doc__, out="worker_results.json")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of the training job")
    parser.add_argument("--generations", type=int, default=3, help="generations submitted mid-training")
    parser.add_argument("--gen-steps", type=int, default=30)
    harness.add_resolution(parser)
    parser.add_argument("--scenarios", default="shared,two_copies")
    parser.add_argument("--train-mode", default="auto", choices=["auto", "fast", "lean"],
                        help="training memory mode (lean parks the text encoders on the CPU between steps)")
    parser.add_argument("--prior", type=int, default=0, metavar="N",
                        help="train with prior preservation on N class images, drawn first (default 0: without)")
    harness.add_tiny_model(parser)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pawtrait-worker-bench-"))
    device = torch.device("cpu" if args.tiny else "cuda")
    settings = Settings(data_dir=work, model="random SDXL-base-1.0", vae=None, device=device.type,
                        resolution=args.resolution, max_queued_generations_per_user=10, scores=False,
                        # No safety weights can be downloaded where this runs, and random ones see people in
                        # random photos; the check's own cost is safety_sdxl.py's (about 10 ms a picture).
                        safety=False)
    results = harness.Results(args.out, **harness.provenance(device), args={k: str(v) for k, v in vars(args).items()},
                              scenarios=[])
    base = base_model(args.tiny, work)
    results.update(dtype=str(base.dtype), gpu_memory_gib=Settings.from_env().gpu_memory_gib,
                   alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"))  # unset: expandable segments (the product's)
    photos = harness.write_photos(work / "photos", 15, args.resolution)
    second: BaseModel | None = None
    for name in args.scenarios.split(","):
        if name == "two_copies" and second is None:
            second = base_model(args.tiny, work)
        started = time.perf_counter()
        row = asyncio.run(scenario(name, base, second if name == "two_copies" else base, settings, photos, args))
        row["scenario_wall_s"] = time.perf_counter() - started
        results["scenarios"].append(row)
        results.save()
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
