"""The queue and the file store on many hosts, measured on the CPU with real servers and real workers.

    python benchmarks/queue_cpu.py --out queue.json [--phases pickup,throughput,failover,duplicates,objects]
    python benchmarks/queue_cpu.py --phases pickup --release /tmp/release   # the release's 1 s poll, for comparison

Servers are the tests' own (tests/services.py): a PostgreSQL cluster from the machine's binaries
(fsync and synchronous_commit on: durable commits) and moto's S3 server, both on loopback.
Workers are `python -m engine.gpu.worker` processes on the tiny random SDXL, each with its own
local folder and host id, as on separate machines.

- pickup: an idle worker's delay from a job's commit to its claim (job row created_at ->
  started_at, both on the database's clock), over many jobs submitted at random moments.
- throughput: claim + finish per second of empty jobs by several processes (durable commits).
- failover: kill -9 a host mid-training (default PAWTRAIT_WORKER_TIMEOUT_S): seconds until the
  job starts again on the other host, and optimizer steps lost.
- duplicates: kill or freeze (SIGSTOP, then SIGCONT after the takeover) the worker of a job at
  a random moment, many times; count jobs that finished twice or produced two results.
- objects: put / get of a picture and of a checkpoint (the real SDXL LoRA sizes) in the folder
  store and in S3 (moto on loopback: a lower bound for a real bucket over a network).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import harness  # noqa: E402

import engine.usecases.jobs  # noqa: E402,F401 - registers the job kinds with the queue
from config.settings import Settings  # noqa: E402

from services import start_postgres, start_s3  # noqa: E402

GENERATION = {"request": {"prompt": "a photo of a cat", "steps": 1, "seed": 7}}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def delay_figures(delays: list[float]) -> dict:
    """The pickup delays (seconds) as reported: median, 99th percentile, worst and mean in ms."""
    return {"trials": len(delays), "p50_ms": 1000 * statistics.median(delays), "p99_ms": 1000 * percentile(delays, 0.99),
            "max_ms": 1000 * max(delays), "mean_ms": 1000 * statistics.mean(delays)}


class Installation:
    """One installation: embedded (SQLite + a folder) or distributed (PostgreSQL + a bucket)."""

    def __init__(self, mode: str, work: Path, model: Path, servers: dict) -> None:
        self.mode, self.work, self.model = mode, work, model
        work.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PAWTRAIT_MODEL": str(model), "PAWTRAIT_VAE": "", "PAWTRAIT_DEVICE": "cpu",
                    "PAWTRAIT_RESOLUTION": "64", "OMP_NUM_THREADS": "1", "PAWTRAIT_DATA_DIR": str(work / "data"),
                    "PAWTRAIT_MAX_QUEUED_GENERATIONS": "100000", "PAWTRAIT_MAX_QUEUED_TRAININGS": "1000"}
        self.settings = Settings(data_dir=work / "data", model=str(model), vae=None, device="cpu", resolution=64,
                                 max_queued_generations_per_user=100000, max_queued_trainings_per_user=1000)
        if mode == "distributed":
            database = servers["postgres"].create_database()
            bucket = servers["s3"].create_bucket()
            s3_env = servers["s3"].env(bucket, "bench")
            self.env.update(s3_env, PAWTRAIT_DATABASE_URL=database)
            self.settings = dataclasses.replace(self.settings, database=database, files=s3_env["PAWTRAIT_FILES_URL"],
                                                extra=s3_env)
        self.workers: list[subprocess.Popen] = []

    def worker(self, host: str, **extra: str) -> subprocess.Popen:
        folder = self.work / host if self.mode == "distributed" else self.work / "data"
        env = {**self.env, "PAWTRAIT_HOST_ID": host, "PAWTRAIT_DATA_DIR": str(folder), **extra}
        log = open(self.work / f"{host}.log", "ab")
        process = subprocess.Popen([sys.executable, "-m", "engine.gpu.worker"], cwd=REPO, env=env, stdout=log, stderr=log)
        self.workers.append(process)
        return process

    def stop(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
        for process in self.workers:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


@contextmanager
def installed(mode: str, work: Path, model: Path, servers: dict) -> Iterator[Installation]:
    """An installation whose workers are stopped however the phase on it ends."""
    installation = Installation(mode, work, model, servers)
    try:
        yield installation
    finally:
        installation.stop()


async def wait_for(check, timeout: float = 120.0, every: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(every)
    raise TimeoutError("gave up waiting")


async def ready(db, count: int) -> None:
    from storage import workers

    async def idle():
        return len([w for w in await workers.live(db, 10) if w.state == "idle"]) >= count

    await wait_for(idle, 180, 0.2)


# --- pickup ---------------------------------------------------------------------------------


async def pickup(installation: Installation, trials: int) -> dict:
    from storage import jobs
    from storage.connect import open_storage

    db, _ = await open_storage(installation.settings)
    installation.worker("host-a")
    await ready(db, 1)
    rng = random.Random(1)
    delays = []
    for _ in range(trials):
        await asyncio.sleep(rng.uniform(0.2, 1.0))  # the worker sleeps until woken (or its catch-up look)
        job = await jobs.submit_job(db, installation.settings, "generate", "local", "bench", GENERATION)

        async def finished(job_id: int = job.id):
            found = await jobs.get_job(db, job_id)
            return found if found.ended else None

        done = await wait_for(finished)
        delays.append(harness.seconds_between(done.created_at, done.started_at))
    await db.close()
    return delay_figures(delays)


RELEASE_PICKUP = """
import asyncio, json, random, statistics, sys, time
from datetime import datetime
from engine.settings import Settings
from storage import jobs
from storage.db import connect

async def main():
    settings = Settings.from_env()
    db = await connect(settings.db_path)
    rng, delays = random.Random(1), []
    while not await db.execute_fetchall("SELECT 1 FROM job_events WHERE kind = 'started'"):
        job = await jobs.submit_job(db, settings, "generate", "local", "bench", %(job)r)
        await asyncio.sleep(2)
    for _ in range(int(sys.argv[1])):
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        job = await jobs.submit_job(db, settings, "generate", "local", "bench", %(job)r)
        while not (job := await jobs.get_job(db, job.id)).ended:
            await asyncio.sleep(0.01)
        parse = lambda t: datetime.strptime(t, "%%Y-%%m-%%dT%%H:%%M:%%S.%%fZ")
        delays.append((parse(job.started_at) - parse(job.created_at)).total_seconds())
    print(json.dumps(delays))

asyncio.run(main())
""" % {"job": GENERATION}  # noqa: UP031 - a code template: {} would need escaping everywhere


def release_pickup(release: Path, work: Path, model: Path, trials: int) -> dict:
    """The same measurement on the release's own code (a checkout of it at `release`)."""
    env = {**os.environ, "PYTHONPATH": str(release), "PAWTRAIT_MODEL": str(model), "PAWTRAIT_VAE": "",
           "PAWTRAIT_DEVICE": "cpu", "PAWTRAIT_RESOLUTION": "64", "OMP_NUM_THREADS": "1",
           "PAWTRAIT_DATA_DIR": str(work / "release-data"), "PAWTRAIT_MAX_QUEUED_GENERATIONS": "1000"}
    log = open(work / "release-worker.log", "ab")
    worker = subprocess.Popen([sys.executable, "-m", "engine.gpu.worker"], cwd=release, env=env, stdout=log, stderr=log)
    try:
        out = subprocess.run([sys.executable, "-c", RELEASE_PICKUP, str(trials)], cwd=release, env=env,
                             capture_output=True, text=True, check=True, timeout=3600).stdout
    finally:
        worker.terminate()
        worker.wait(30)
    return delay_figures(json.loads(out.strip().splitlines()[-1]))


# --- throughput -----------------------------------------------------------------------------

DRAIN = """
import asyncio, os, sys, time
from storage import jobs
from storage.db import open_database

async def main():
    db = await open_database(sys.argv[1])
    worker, done = f"drain:{os.getpid()}", 0
    while not os.path.exists(sys.argv[2]):  # all processes start draining together
        time.sleep(0.001)
    started = time.time()
    while True:
        job = await jobs.claim_next_job(db, worker)
        if job is None:
            break
        await jobs.finish_job(db, job.lease, "succeeded", {"files": []})
        done += 1
    print(done, started, time.time())
    await db.close()

asyncio.run(main())
"""


async def throughput(url: str, work: Path, jobs_count: int, processes: int) -> dict:
    from sqlalchemy import insert

    from storage.db import open_database
    from storage.dialects import utc_now
    from storage.schema import jobs as jobs_table

    db = await open_database(url)
    rows = [dict(kind="generate", status="queued", guild_id="local", user_id=f"u{i}", payload='{"request":{}}',
                 progress=0, attempts=0, cancel_requested=0) for i in range(jobs_count)]
    await db.execute(insert(jobs_table).values(created_at=utc_now()), rows)
    await db.close()
    go = work / "go"
    drains = [subprocess.Popen([sys.executable, "-c", DRAIN, url, str(go)], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
              for _ in range(processes)]
    await asyncio.sleep(8.0)  # every process has imported and connected
    go.touch()
    reports = [process.communicate()[0].strip().splitlines()[-1].split() for process in drains]
    done = sum(int(report[0]) for report in reports)
    seconds = max(float(report[2]) for report in reports) - min(float(report[1]) for report in reports)
    assert done == jobs_count, (done, jobs_count)
    return {"jobs": done, "processes": processes, "seconds": seconds, "per_s": done / seconds}


# --- failover and duplicates ------------------------------------------------------------------


async def failover(installation: Installation, trials: int) -> list[dict]:
    from engine.usecases.training import TrainingParams, create_run
    from storage import jobs, runs
    from storage.connect import open_storage
    from storage.pets import LOCAL_GUILD

    from training_helpers import pet_with_photos

    db, store = await open_storage(installation.settings)
    rows = []
    hosts = {"host-a": installation.worker("host-a")}
    await ready(db, 1)
    for trial in range(trials):
        pet = await pet_with_photos(db, store, name=f"Pet{trial}")
        params = TrainingParams(steps=400, checkpoint_every=20, validate_every=0, resolution=64,
                                gradient_accumulation=1)
        run_id = await create_run(db, store, pet, params)
        job = await jobs.submit_job(db, installation.settings, "train", LOCAL_GUILD, "bench",
                                    {"run_id": run_id, "pet_id": pet.id}, run_id)

        async def checkpointed(job_id: int = job.id):
            return [e for e in await jobs.events_after(db, jobs.START, [job_id]) if e.kind == "checkpoint"]

        await wait_for(checkpointed, 300, 0.2)
        await asyncio.sleep(random.uniform(0.0, 3.0))
        owner = (await jobs.get_job(db, job.id)).worker_id.split(":")[0]
        spare = "host-b" if owner == "host-a" else "host-a"
        if spare not in hosts or hosts[spare].poll() is not None:
            hosts[spare] = installation.worker(spare)
            await ready(db, 1)
        hosts[owner].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        # The step reached: the newer of the last reported progress (reported once a second) and checkpoint.
        progress = [e.data["step"] for e in await jobs.events_after(db, jobs.START, [job.id]) if e.kind == "progress"]
        resumed_from = (await runs.list_checkpoints(db, run_id))[-1].step
        last_step = max(progress[-1] if progress else 0, resumed_from)

        async def restarted(job_id: int = job.id):
            starts = [e for e in await jobs.events_after(db, jobs.START, [job_id]) if e.kind == "started"]
            return starts[1:]

        await wait_for(restarted, 120, 0.05)
        again = time.monotonic() - killed
        rows.append({"trial": trial, "seconds_to_restart": again, "steps_done_before_kill": last_step,
                     "resumed_from_checkpoint": resumed_from, "steps_lost_at_most": last_step - resumed_from,
                     "checkpoint_every": 20})
        print("failover", rows[-1], flush=True)
        await jobs.request_cancel(db, job.id)

        async def ended(job_id: int = job.id):
            return (await jobs.get_job(db, job_id)).ended

        await wait_for(ended, 120, 0.2)
        hosts[owner] = installation.worker(owner)
        await ready(db, 2)
    await db.close()
    return rows


async def duplicates(installation: Installation, trials: int) -> dict:
    from sqlalchemy import func, select

    from storage import jobs
    from storage.connect import open_storage
    from storage.schema import generations

    db, _ = await open_storage(installation.settings)
    extra = {"PAWTRAIT_WORKER_TIMEOUT_S": "3", "PAWTRAIT_MAX_JOB_ATTEMPTS": "100"}
    hosts = {name: installation.worker(name, **extra) for name in ("host-a", "host-b")}
    await ready(db, 2)
    rng = random.Random(2)
    outcomes = {"killed": 0, "stopped": 0, "finished_twice": 0, "results_twice": 0, "not_succeeded": 0}
    for trial in range(trials):
        seed = 1000 + trial
        job = await jobs.submit_job(db, installation.settings, "generate", "local", "bench",
                                    {"request": {"prompt": "a photo of a cat", "steps": 40, "seed": seed}})

        async def running(job_id: int = job.id):
            found = await jobs.get_job(db, job_id)
            return found if found.status == "running" else None

        started = await wait_for(running, 120)
        await asyncio.sleep(rng.uniform(0.0, 1.0))
        host = started.worker_id.split(":")[0]
        how = rng.choice(("killed", "stopped"))
        outcomes[how] += 1
        hosts[host].send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)

        async def ended(job_id: int = job.id):
            found = await jobs.get_job(db, job_id)
            return found if found.ended else None

        done = await wait_for(ended, 300, 0.05)
        if how == "stopped":
            hosts[host].send_signal(signal.SIGCONT)  # wakes up believing the job is its own
            await asyncio.sleep(2.0)
        else:
            hosts[host].wait()
            hosts[host] = installation.worker(host, **extra)
        await ready(db, 2)
        events = await jobs.events_after(db, jobs.START, [job.id])
        finished = [e for e in events if e.kind == "finished"]
        results = await db.scalar(select(func.count()).select_from(generations).where(generations.c.seed == seed))
        outcomes["finished_twice"] += len(finished) > 1
        outcomes["results_twice"] += results > 1
        outcomes["not_succeeded"] += done.status != "succeeded"
        print("duplicates", trial, how, done.status, len(finished), results, flush=True)
    await db.close()
    return {"trials": trials, **outcomes}


# --- objects ----------------------------------------------------------------------------------


def lora_sizes() -> tuple[int, int]:
    """Bytes of the diffusers and kohya files of a rank-4 SDXL attention LoRA in fp32 (the real layer sizes)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from sdxl_random import UNET_CONFIG

    with init_empty_weights():
        unet = UNet2DConditionModel(**UNET_CONFIG)
    params = 0
    for name, module in unet.named_modules():
        if name.endswith(("to_q", "to_k", "to_v", "to_out.0")):
            params += 4 * (module.in_features + module.out_features)
    return params * 4, params * 4


async def objects(settings_by_mode: dict[str, Settings], work: Path, repeats: int) -> dict:
    from storage.connect import file_store

    picture = os.urandom(1_600_000)  # a 1024² PNG of a picture is 1.2-1.8 MB
    diffusers_bytes, kohya_bytes = lora_sizes()
    folder = work / "checkpoint-source"
    folder.mkdir()
    (folder / "pytorch_lora_weights.safetensors").write_bytes(os.urandom(diffusers_bytes))
    (folder / "pawtrait-x.safetensors").write_bytes(os.urandom(kohya_bytes))
    # Resume state: the LoRA in fp32 plus two 8-bit Adam moments and their scales, roughly 1.6x the LoRA.
    (folder / "training_state.pt").write_bytes(os.urandom(int(diffusers_bytes * 1.6)))
    checkpoint_mb = sum(path.stat().st_size for path in folder.iterdir()) / 1e6
    results: dict = {"picture_mb": len(picture) / 1e6, "checkpoint_mb": checkpoint_mb}
    for mode, settings in settings_by_mode.items():
        store = file_store(settings)
        row: dict = {}
        for what, put, key in (
            ("picture", lambda i: store.put_bytes(f"generations/b{i}/1.png", picture), lambda i: f"generations/b{i}/1.png"),
            ("checkpoint", None, lambda i: f"runs/1/checkpoints/step-{i}/pytorch_lora_weights.safetensors"),
        ):
            puts, gets = [], []
            for index in range(repeats):
                copy = work / f"copy-{mode}-{what}-{index}"
                if what == "checkpoint":
                    subprocess.run(["cp", "-r", str(folder), str(copy)], check=True)
                started = time.perf_counter()
                if what == "checkpoint":
                    await store.put_tree(f"runs/1/checkpoints/step-{index}", copy, move=True)
                else:
                    await put(index)
                puts.append(time.perf_counter() - started)
                cache = store.cached(key(index))
                if cache is not None and not store.is_local:
                    cache.unlink()
                started = time.perf_counter()
                await store.local_path(key(index))
                gets.append(time.perf_counter() - started)
            row[what] = {"put_ms": 1000 * statistics.median(puts), "get_ms": 1000 * statistics.median(gets)}
        results[mode] = row
        print("objects", mode, row, flush=True)
    return results


@dataclass
class Bench:
    """What the phases share: the command line, the tiny model, the servers and the results."""

    args: argparse.Namespace
    work: Path
    model: Path
    servers: dict
    results: harness.Results

    @property
    def modes(self) -> list[str]:
        return self.args.modes.split(",")


def phase_pickup(bench: Bench) -> dict:
    found = {}
    if bench.args.release:
        found["release"] = release_pickup(bench.args.release, bench.work, bench.model, bench.args.pickups)
        print("pickup release", found["release"], flush=True)
    for mode in bench.modes:
        with installed(mode, bench.work / f"pickup-{mode}", bench.model, bench.servers) as installation:
            found[mode] = asyncio.run(pickup(installation, bench.args.pickups))
        print("pickup", mode, found[mode], flush=True)
    return found


def phase_throughput(bench: Bench) -> list[dict]:
    rows = []
    for mode in bench.modes:
        for processes in (1, 2, 4):
            installation = Installation(mode, bench.work / f"throughput-{mode}-{processes}", bench.model, bench.servers)
            url = installation.settings.database_url.text
            rows.append({"mode": mode, **asyncio.run(throughput(url, installation.work, bench.args.jobs, processes))})
            print("throughput", rows[-1], flush=True)
    return rows


def phase_failover(bench: Bench) -> list[dict]:
    with installed("distributed", bench.work / "failover", bench.model, bench.servers) as installation:
        return asyncio.run(failover(installation, bench.args.failovers))


def phase_duplicates(bench: Bench) -> dict:
    with installed("distributed", bench.work / "duplicates", bench.model, bench.servers) as installation:
        return asyncio.run(duplicates(installation, bench.args.duplicate_trials))


def phase_objects(bench: Bench) -> dict:
    by_mode = {mode: Installation(mode, bench.work / f"objects-{mode}", bench.model, bench.servers).settings
               for mode in bench.modes}
    return asyncio.run(objects(by_mode, bench.work, 5))


# In this order, whatever the order --phases names them in.
PHASES: dict[str, Callable[[Bench], object]] = {
    "pickup": phase_pickup, "throughput": phase_throughput, "failover": phase_failover,
    "duplicates": phase_duplicates, "objects": phase_objects,
}


def main() -> int:
    parser = harness.parser(__doc__, out="queue.json")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--modes", default="embedded,distributed")
    parser.add_argument("--pickups", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--duplicate-trials", type=int, default=50)
    parser.add_argument("--release", type=Path, help="a checkout of the release (5e490ef) to measure its pickup too")
    args = parser.parse_args()
    chosen = dict(harness.selected(args.phases, PHASES))

    from engine.gpu.tiny_model import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="pawtrait-queue-bench-"))
    model = make_tiny_model(work / "tiny")
    servers = {"postgres": start_postgres(), "s3": start_s3()}
    results = harness.Results(args.out, machine=f"{os.cpu_count()} CPU cores", date=harness.today(), phases={})
    bench = Bench(args, work, model, servers, results)
    try:
        for name, phase in PHASES.items():
            if name in chosen:
                results["phases"][name] = phase(bench)
                results.save()
    finally:
        servers["postgres"].close()
        servers["s3"].close()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
