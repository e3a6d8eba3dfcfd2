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

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measuring import pictures, timed

from engine.gpu.safety.checker import SafetyChecker
from engine.gpu.safety.tiny import build_safety_checker

# CLIPImageProcessor's defaults: what CompVis/stable-diffusion-safety-checker's preprocessor_config.json says.
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
TARGET_MS, TARGET_GB = 30.0, 1.5
GB = 1e9


def timed_ms(run, device: torch.device, repeats: int) -> float:
    """Median wall time of `run()` in ms over `repeats` calls."""
    return statistics.median(timed(run, device) * 1000 for _ in range(repeats))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (a dry run; no memory figure)")
    parser.add_argument("--tiny", action="store_true", help="a tiny checker (32² input): checks the script, not the cost")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--side", type=int, default=1024, help="the pictures' side in pixels")
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    args = parser.parse_args()
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    # 1. The checker, built on the device with random weights (real shapes unless --tiny).
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    with torch.device(device):
        model = build_safety_checker(real=not args.tiny).to(dtype)
    size = model.config.vision_config.image_size
    checker = SafetyChecker(model, size, torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD))
    weights = (torch.cuda.memory_allocated(device) - before) if device.type == "cuda" else 0

    # 2. Warm-up (cuDNN / cuBLAS choices, the first kernels), then the timings.
    four = pictures(4, args.side, seed=1)
    for batch in (four[:1], four[:3], four):
        checker.flags(batch)
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "dtype": str(dtype).removeprefix("torch."), "input": f"{args.side}x{args.side} -> {size}x{size}"}
    for name, batch in (("1 picture", four[:1]), ("3 pictures (validation round)", four[:3]), ("4 pictures", four)):
        ms = timed_ms(lambda batch=batch: checker.flags(batch), device, args.repeats)
        results[name] = {"ms": round(ms, 2), "ms_per_picture": round(ms / len(batch), 2)}
    preprocessing = timed_ms(lambda: checker.pixels(four[:1]), device, args.repeats)
    results["preprocessing of 1 picture (ms)"] = round(preprocessing, 2)

    # 3. Memory: the weights, and the peak while screening 4 pictures above what was allocated before.
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        resident = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        checker.flags(four)
        torch.cuda.synchronize(device)
        results["weights (GB)"] = round(weights / GB, 3)
        results["peak while screening 4, above the weights (GB)"] = round((torch.cuda.max_memory_allocated(device) - resident) / GB, 3)
        results["peak in all (GB)"] = round((torch.cuda.max_memory_allocated(device) - before) / GB, 3)

    print(json.dumps(results, indent=2))
    worst = max(results[name]["ms_per_picture"] for name in ("1 picture", "3 pictures (validation round)", "4 pictures"))
    print(f"worst ms per picture: {worst:.2f} (target <= {TARGET_MS:g})"
          + ("" if device.type != "cuda" else f"; peak GB: {results['peak in all (GB)']:.3f} (target <= {TARGET_GB:g})"))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
