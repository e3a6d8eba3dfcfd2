"""Two GPUs on one host (issue 15): the product's own worker processes, one per GPU, measured.

Needs a machine with two GPUs. It saves a random SDXL-base-1.0 (sdxl_random.py) to a folder,
as a downloaded model would be, and drives an embedded installation (SQLite and a data folder,
what `pawtrait bot` uses by default) through `WorkerSupervisor`, the bot's own way of starting
one worker per visible GPU, first with one worker, then with two:

1. one worker: a training alone, then pictures one after another;
2. two workers: two trainings submitted together (when each started, on which GPU, how long
   each took against the one-worker training), a picture submitted while both train (served
   between steps: its wait), a picture while one trains and the other idles (which GPU, its
   wait), and pictures painted by both;
3. throughout: each GPU's memory in use (nvidia-smi) and the workers' resident host memory.

    python benchmarks/two_gpus.py --out two_gpus.json [--steps 100] [--pictures 8]
    python benchmarks/two_gpus.py --tiny MODEL_DIR --resolution 64 --steps 4 --pictures 2   # a CPU dry run

Compile is off in the workers here (PAWTRAIT_COMPILE*=false), so idle-time compiling does not
mix into the timings; both workers of a host keep compiled code in the same data/compile-cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness
from harness import embedded_install, pet_with, seconds_between
from sdxl_random import save_random_sdxl

from config.settings import Settings
from engine.gpu.worker.supervisor import WorkerSupervisor
from engine.usecases.training import TrainingParams, create_run
from storage import jobs, workers
from storage.db import Database
from storage.files import FileStore
from storage.pets import LOCAL_GUILD

POLL_S = 0.05


def worker_env(model: Path, data: Path, count: int, resolution: int, cpu: bool) -> dict[str, str]:
    return {
        **os.environ, "PAWTRAIT_MODEL": str(model), "PAWTRAIT_VAE": "", "PAWTRAIT_DATA_DIR": str(data),
        "PAWTRAIT_WORKERS": str(count), "PAWTRAIT_RESOLUTION": str(resolution), "PAWTRAIT_SCORES": "off",
        "PAWTRAIT_COMPILE": "false", "PAWTRAIT_COMPILE_TRAINING": "false",
        # No safety weights can be had here (random ones see people in random photos); safety_sdxl.py measures the check.
        "PAWTRAIT_SAFETY": "off",
        "PAWTRAIT_DEVICE": "cpu" if cpu else "auto",
    }


class Memory:
    """Samples each GPU's memory in use and the workers' resident memory every half second."""

    def __init__(self, pids: list[int], gpus: bool) -> None:
        self.pids, self.gpus = pids, gpus
        self.gpu_mib: dict[int, int] = {}
        self.host_mib: dict[int, int] = {}
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            if self.gpus:
                query = ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"]
                out = (await asyncio.to_thread(subprocess.run, query, capture_output=True, text=True)).stdout
                for line in out.strip().splitlines():
                    index, used = (int(part) for part in line.split(","))
                    self.gpu_mib[index] = max(self.gpu_mib.get(index, 0), used)
            for pid in self.pids:
                if rss_kib := harness.status_kib(pid, "VmRSS"):
                    self.host_mib[pid] = max(self.host_mib.get(pid, 0), rss_kib // 1024)
            await asyncio.sleep(0.5)

    def stop(self) -> dict:
        self._task.cancel()
        return {"gpu_peak_mib": self.gpu_mib, "worker_rss_peak_mib": list(self.host_mib.values())}


async def finished(db: Database, job_ids: list[int]) -> list[jobs.Job]:
    while True:
        done = [await jobs.get_job(db, job_id) for job_id in job_ids]
        if all(job is not None and job.ended for job in done):
            return done  # type: ignore[return-value]
        await asyncio.sleep(POLL_S)


async def until_running(db: Database, job_id: int) -> None:
    while (job := await jobs.get_job(db, job_id)) is not None and job.status == "queued":
        await asyncio.sleep(POLL_S)


async def idle_workers(db: Database, count: int) -> dict[str, str]:
    """Wait until `count` workers are idle; their ids and devices."""
    while True:
        live = [w for w in await workers.live(db, 30) if w.state == "idle"]
        if len(live) >= count:
            return {w.id: w.device for w in live}
        await asyncio.sleep(0.2)


def describe(job: jobs.Job, devices: dict[str, str]) -> dict:
    return {"job": job.id, "status": job.status, "device": devices.get(job.worker_id or "", job.worker_id),
            "wait_s": seconds_between(job.created_at, job.started_at), "run_s": seconds_between(job.started_at, job.finished_at),
            "started_at": job.started_at, "error": job.error}


class Bench:
    def __init__(self, db: Database, store: FileStore, settings: Settings, photos: list[Path], args) -> None:
        self.db, self.store, self.settings, self.photos, self.args = db, store, settings, photos, args
        self.users = 0

    async def training(self) -> int:
        self.users += 1
        pet = await pet_with(self.db, self.store, self.photos, self.args.resolution, name=f"Pet{self.users}")
        params = TrainingParams(steps=self.args.steps, checkpoint_every=self.args.steps, validate_every=0,
                                resolution=self.args.resolution, compile=False)
        run_id = await create_run(self.db, self.store, pet, params)
        job = await jobs.submit_job(self.db, self.settings, "train", LOCAL_GUILD, f"trainer{self.users}",
                                    {"run_id": run_id, "pet_id": pet.id}, run_id)
        return job.id

    async def picture(self, seed: int) -> int:
        payload = {"request": {"prompt": "a photo of a cat on a sofa", "steps": self.args.picture_steps, "seed": seed}}
        job = await jobs.submit_job(self.db, self.settings, "generate", LOCAL_GUILD, f"painter{seed}", payload)
        return job.id

    async def pictures(self, count: int) -> tuple[float, list[jobs.Job]]:
        started = time.perf_counter()
        done = await finished(self.db, [await self.picture(seed) for seed in range(count)])
        return count / (time.perf_counter() - started), done


async def one_worker(bench: Bench, devices: dict[str, str]) -> dict:
    [training] = await finished(bench.db, [await bench.training()])
    rate, painted = await bench.pictures(bench.args.pictures)
    return {"training": describe(training, devices), "pictures_per_s": rate,
            "picture_run_s": statistics.median(seconds_between(j.started_at, j.finished_at) for j in painted)}


async def two_workers(bench: Bench, devices: dict[str, str]) -> dict:
    both = [await bench.training(), await bench.training()]
    for job_id in both:
        await until_running(bench.db, job_id)
    await asyncio.sleep(2.0)  # both well into their steps
    served = await bench.picture(1000)
    trainings = await finished(bench.db, both)
    [served_job] = await finished(bench.db, [served])
    # One GPU trains, the other idles: the picture should go to the idle one at once.
    lone = await bench.training()
    await until_running(bench.db, lone)
    await asyncio.sleep(2.0)
    to_idle = await bench.picture(2000)
    [to_idle_job] = await finished(bench.db, [to_idle])
    [lone_job] = await finished(bench.db, [lone])
    rate, painted = await bench.pictures(2 * bench.args.pictures)
    return {"trainings_together": [describe(job, devices) for job in trainings],
            "picture_while_both_train": describe(served_job, devices),
            "training_on_one_gpu": describe(lone_job, devices),
            "picture_while_one_idles": describe(to_idle_job, devices),
            "pictures_per_s": rate,
            "pictures_by_device": {device: sum(1 for j in painted if devices.get(j.worker_id or "") == device)
                                   for device in set(devices.values())}}


async def phase_workers(name: str, count: int, env: dict[str, str], args: argparse.Namespace, photos: list[Path]) -> dict:
    """`count` workers started by the supervisor on an installation of their own, measured while they run."""
    settings = Settings.from_env(env)
    db, store, _ = await embedded_install(Path(env["PAWTRAIT_DATA_DIR"]))
    supervisor = WorkerSupervisor(settings, env)
    started = time.perf_counter()
    pids = await supervisor.start()
    memory = Memory(pids, gpus=not args.tiny)
    try:
        devices = await idle_workers(db, count)
        ready_s = time.perf_counter() - started
        bench = Bench(db, store, settings, photos, args)
        run = one_worker if count == 1 else two_workers
        result = {"workers": count, "ready_s": ready_s, "devices": sorted(devices.values()), **await run(bench, devices)}
    finally:
        result_memory = memory.stop()
        await supervisor.stop()
        await db.close()
    print(name, json.dumps({**result, **result_memory}), flush=True)
    return {**result, **result_memory}


async def phase_model(args: argparse.Namespace, work: Path, results: harness.Results) -> Path:
    """The tiny model of a dry run, or random SDXL-base-1.0 saved to disk (the cards noted)."""
    if args.tiny:
        return args.tiny
    results["cards"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    started = time.perf_counter()
    await asyncio.to_thread(save_random_sdxl, work / "model", work / "tokenizer")
    results["save_model_s"] = time.perf_counter() - started
    return work / "model"


def summary(one: dict, two: dict) -> dict:
    """Two workers against one: trainings' slowdown side by side, trainings per hour, pictures per second."""
    alone = one["training"]["run_s"]
    return {
        "training_alone_s": alone,
        "trainings_together_s": [t["run_s"] for t in two["trainings_together"]],
        "slowdown_together": [t["run_s"] / alone for t in two["trainings_together"] if t["run_s"] and alone],
        "trainings_per_hour": {"one": 3600 / alone if alone else None,
                               "two": 2 * 3600 / max(t["run_s"] for t in two["trainings_together"])},
        "pictures_per_s": {"one": one["pictures_per_s"], "two": two["pictures_per_s"],
                           "ratio": two["pictures_per_s"] / one["pictures_per_s"]},
    }


async def main_async(args: argparse.Namespace) -> harness.Results:
    work = Path(tempfile.mkdtemp(prefix="two-gpus-"))
    results = harness.Results(args.out, torch=torch.__version__, steps=args.steps, pictures=args.pictures)
    model = await phase_model(args, work, results)
    photos = harness.write_photos(work / "photos", 15, args.resolution)
    for name, count in (("one worker", 1), ("two workers", 2)):
        env = worker_env(model, work / f"data-{count}", count, args.resolution, cpu=bool(args.tiny))
        results[name] = await phase_workers(name, count, env, args, photos)
        results.save()
    results["summary"] = summary(results["one worker"], results["two workers"])
    return results


def main() -> int:
    parser = harness.parser(__doc__, out="two_gpus.json")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps of each training")
    parser.add_argument("--pictures", type=int, default=8, help="pictures per worker in the throughput part")
    parser.add_argument("--picture-steps", type=int, default=30)
    harness.add_resolution(parser)
    harness.add_tiny_model(parser, "a tiny model folder: a dry run with CPU workers")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    results.save()
    print(json.dumps(results["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
