"""`pawtrait train` as an operator runs it, timed from the command to its exit: the wall time a
member's pet takes from a shell, model loading included.

No weights can be downloaded where this runs, so it builds SDXL-base-1.0 with random weights on
the GPU and saves it as a diffusers folder on local disk (what a downloaded model is), teaches a
pet 15 random 1024² photos with `pawtrait teach`, then starts `pawtrait train NAME` in a fresh
process and records when each line of its output appeared and when it exited.

With `--after-worker`, a worker's idle-time compile of the default run's plan runs first, in a
process of its own on the same data folder (what `python -m engine.gpu.worker` does while nobody
asks for anything), so the command finds the plan in the compile cache's record and trains compiled.

    python benchmarks/train_command.py --out results.json [--steps 500] [--after-worker]
    python benchmarks/train_command.py --tiny MODEL_DIR --resolution 64 --steps 20   # a CPU dry run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness
from sdxl_random import save_random_sdxl


def pawtrait(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args], env=env, cwd=harness.REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def timed_lines(process: subprocess.Popen, started: float) -> list[tuple[float, str]]:
    """Each line the process writes (progress bars redraw with \\r: each redraw counts), with its time."""
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert process.stdout is not None
        buffer = ""
        while chunk := process.stdout.read(1):
            if chunk in "\r\n":
                if buffer.strip():
                    lines.append((time.perf_counter() - started, buffer.strip()))
                buffer = ""
            else:
                buffer += chunk

    reader = threading.Thread(target=read)
    reader.start()
    process.wait()
    reader.join()
    return lines


def phase_model(tiny: Path | None, work: Path, results: harness.Results) -> Path:
    """The tiny model of a dry run, or random SDXL-base-1.0 in bf16 saved as a diffusers folder."""
    if tiny:
        results["card"] = harness.DRY_RUN_CARD
        return tiny
    results["card"] = torch.cuda.get_device_name()
    results["save_model_s"] = save_random_sdxl(work / "model", work / "tokenizer")
    return work / "model"


def phase_teach(env: dict[str, str], work: Path) -> bool:
    """`pawtrait teach Thor` with 15 random 1024² photos (what members send: intake takes 512 px and up)."""
    photos = harness.write_photos(work / "photos", 15, 1024)
    teach = pawtrait(env, "teach", "Thor", "--class", "cat", *map(str, photos))
    out, _ = teach.communicate()
    if teach.returncode != 0:
        print(out)
    return teach.returncode == 0


def phase_worker_compile(env: dict[str, str]) -> dict:
    """A worker's idle-time compile of the default run's plan, in its own process (`--compile-as-worker`)."""
    started = time.perf_counter()
    worker = subprocess.run([sys.executable, __file__, "--compile-as-worker"], env=env, cwd=harness.REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return dict(worker_returncode=worker.returncode, worker_compile_wall_s=time.perf_counter() - started,
                worker_compile=worker.stdout.strip().splitlines()[-1:])


def compile_as_worker() -> int:
    """Load the model as a worker does and compile its default training plan to the end."""
    from config.settings import Settings
    from engine.gpu.process_models import ProcessModels
    from engine.usecases.training.params import DEFAULT_STEPS, TrainingParams

    settings = Settings.from_env()
    ahead = ProcessModels.load(settings).training_compile(settings)
    if ahead is None:
        print("this process does not compile trainings (no GPU in full memory mode, or compile off)")
        return 1
    ahead.want(TrainingParams.for_steps(DEFAULT_STEPS, settings))
    started, pieces = time.perf_counter(), 0
    while ahead.step():
        pieces += 1
    print(f"compiled the default plan in {pieces} pieces, {time.perf_counter() - started:.1f} s")
    return 0


def phase_train(env: dict[str, str], steps: int) -> dict:
    """`pawtrait train Thor`, timed from the command to its exit, with when each line appeared."""
    started = time.perf_counter()
    train = pawtrait(env, "train", "Thor", "--steps", str(steps))
    lines = timed_lines(train, started)
    return dict(
        returncode=train.returncode, wall_s=time.perf_counter() - started,
        # The service logs its memory plan once the model is loaded, just before it caches the photos.
        model_loaded_s=next((at for at, line in lines if " mode (" in line and "run " in line), None),
        trained_s=next((at for at, line in lines if " is trained " in line), None),
        messages=[(at, line) for at, line in lines if "%|" not in line],  # what it said besides the bar
    )


def main() -> int:
    parser = harness.parser(__doc__, out="train_command.json")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--after-worker", action="store_true",
                        help="let a worker process compile the default plan first, as in its idle time")
    parser.add_argument("--compile-as-worker", action="store_true", help=argparse.SUPPRESS)
    harness.add_resolution(parser)
    harness.add_tiny_model(parser)
    args = parser.parse_args()
    if args.compile_as_worker:
        return compile_as_worker()

    work = Path(tempfile.mkdtemp(prefix="pawtrait-train-command-"))
    results = harness.Results(args.out, steps=args.steps, resolution=args.resolution)
    model = phase_model(args.tiny, work, results)
    env = {**os.environ, "PAWTRAIT_DATA_DIR": str(work / "data"), "PAWTRAIT_MODEL": str(model), "PAWTRAIT_VAE": "",
           "PAWTRAIT_RESOLUTION": str(args.resolution), "PAWTRAIT_SCORES": "off", "HF_HUB_OFFLINE": "1"}
    if args.tiny:
        env["PAWTRAIT_DEVICE"] = "cpu"
    if not phase_teach(env, work):
        return 1
    if args.after_worker:
        results.update(phase_worker_compile(env))
    results.update(phase_train(env, args.steps))
    results.save()
    print(json.dumps(results, indent=2))
    return 0 if results["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
