"""Picture screening on a GPU: what the worker's safety check costs per 1024² picture.

No weights can be downloaded where this runs, so it builds the Stable Diffusion safety checker
(CLIP ViT-L/14 at 224², 17 + 3 concepts) with random weights directly on the device
(engine/gpu/safety/tiny.py; time and memory do not depend on weight values) and screens pictures
through the product's SafetyChecker, preprocessing on the device included, exactly as the worker
does: half precision on CUDA, the PIL picture in, one verdict per picture out.

    python benchmarks/safety_sdxl.py [--repeats 20]
    python benchmarks/safety_sdxl.py --cpu --tiny      # a dry run without a GPU

Needs only torch, transformers and diffusers (and their own dependencies: numpy, Pillow).
Reports, after warm-up: ms per picture for a single picture (a preview or a 1-image
/imagine), for 4 pictures at once (the most /imagine paints) and for a 3-picture validation
round, and the GPU memory: the checker's weights, and the peak while screening 4 pictures
minus what was allocated before. Targets: <= 30 ms per picture, <= 1.5 GB.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness

from engine.gpu.safety.checker import SafetyChecker
from engine.gpu.safety.tiny import build_safety_checker

# CLIPImageProcessor's defaults: what CompVis/stable-diffusion-safety-checker's preprocessor_config.json says.
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
TARGET_MS, TARGET_GB = 30.0, 1.5
GB = 1e9
BATCHES = {"1 picture": 1, "3 pictures (validation round)": 3, "4 pictures": 4}


def timed_ms(run, device: torch.device, repeats: int) -> float:
    """Median wall time of `run()` in ms over `repeats` calls."""
    return harness.median_s(run, repeats, device) * 1000


def allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def phase_build(device: torch.device, dtype: torch.dtype, tiny: bool) -> tuple[SafetyChecker, int, int]:
    """The checker, built on the device with random weights (real shapes unless `tiny`): it, the bytes
    allocated before and the bytes its weights took."""
    harness.reset_peak(device)
    before = allocated(device)
    with torch.device(device):
        model = build_safety_checker(real=not tiny).to(dtype)
    size = model.config.vision_config.image_size
    checker = SafetyChecker(model, size, torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD))
    return checker, before, allocated(device) - before


def phase_timings(checker: SafetyChecker, four: list[Image.Image], device: torch.device, repeats: int) -> dict:
    """Warm-up (cuDNN / cuBLAS choices, the first kernels), then ms for each batch and for the
    preprocessing of one picture."""
    for count in BATCHES.values():
        checker.flags(four[:count])
    results: dict = {}
    for name, count in BATCHES.items():
        ms = timed_ms(lambda count=count: checker.flags(four[:count]), device, repeats)
        results[name] = {"ms": round(ms, 2), "ms_per_picture": round(ms / count, 2)}
    results["preprocessing of 1 picture (ms)"] = round(timed_ms(lambda: checker.pixels(four[:1]), device, repeats), 2)
    return results


def phase_memory(checker: SafetyChecker, four: list[Image.Image], device: torch.device, before: int, weights: int) -> dict:
    """The weights, and the peak while screening 4 pictures above what was allocated before."""
    harness.sync(device)
    resident = allocated(device)
    harness.reset_peak(device)
    checker.flags(four)
    harness.sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"weights (GB)": round(weights / GB, 3),
            "peak while screening 4, above the weights (GB)": round((peak - resident) / GB, 3),
            "peak in all (GB)": round((peak - before) / GB, 3)}


def main() -> int:
    parser = harness.parser(__doc__, out=None)
    harness.add_cpu_dry_run(parser, "a tiny checker (32² input): checks the script, not the cost")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--side", type=int, default=1024, help="the pictures' side in pixels")
    args = parser.parse_args()
    device = harness.cpu_or_cuda(args.cpu)
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    checker, before, weights = phase_build(device, dtype, args.tiny)
    size = checker.size
    four = harness.pictures(4, args.side, seed=1)
    results = harness.Results(args.out, device=harness.card(device, cpu="cpu"), dtype=str(dtype).removeprefix("torch."),
                              input=f"{args.side}x{args.side} -> {size}x{size}")
    results.update(phase_timings(checker, four, device, args.repeats))
    if device.type == "cuda":
        results.update(phase_memory(checker, four, device, before, weights))

    print(json.dumps(results, indent=2))
    worst = max(results[name]["ms_per_picture"] for name in BATCHES)
    print(f"worst ms per picture: {worst:.2f} (target <= {TARGET_MS:g})"
          + ("" if device.type != "cuda" else f"; peak GB: {results['peak in all (GB)']:.3f} (target <= {TARGET_GB:g})"))
    results.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
