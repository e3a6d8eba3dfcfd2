"""Checkpoint scoring on a GPU: one validation round through the product's Scorer.

No weights can be downloaded where this runs, so it writes DINO ViT-S/16 and CLIP ViT-B/32
with their real shapes and random weights (engine/gpu/scoring/tiny.py; time and memory do not
depend on weight values), loads them the way a worker does, and scores validation rounds of
3 pictures at 1024² against 15 reference photos whose embeddings are computed once and
cached, as a training run does.

    python benchmarks/score_gpu.py [--rounds 10] [--out results.json]
    python benchmarks/score_gpu.py --cpu --tiny      # a dry run without a GPU

Reports, after one warm-up round: seconds per round as training pays it (models to the GPU,
scoring, GPU copy dropped), the same with the models copied back to the CPU (the first
version, side by side), the scoring alone, and the extra GPU memory of a round (peak
allocated minus what was allocated before). Targets: <= 0.5 s per round,
<= 1.5 GiB extra.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measuring import pictures, timed

from engine.gpu.scoring.scorer import Scorer, Subject, score_with
from engine.gpu.scoring.tiny import make_scoring_models

GIB = 2**30
TEXTS = ["a photo of cat", "an oil painting of cat in the style of van gogh, swirling starry sky",
         "cat wearing a tiny astronaut helmet, floating in space, digital art"]
TARGET_ROUND_S, TARGET_EXTRA_GIB = 0.5, 1.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (a dry run; no memory figure)")
    parser.add_argument("--tiny", action="store_true", help="tiny models instead of the real shapes (a dry run)")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds after the warm-up (default 10)")
    parser.add_argument("--side", type=int, default=1024, help="side of the validation pictures (default 1024)")
    parser.add_argument("--photos", type=int, default=15, help="reference photos (default 15)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        dino, clip = make_scoring_models(Path(folder), real=not args.tiny)
        write_s = time.perf_counter() - started
        scorer = Scorer(str(dino), str(clip))
        load_s = timed(scorer.models, torch.device("cpu"))
    models = scorer.models()
    assert models is not None
    subject = Subject(pictures(args.photos, args.side, seed=1))
    round_pictures = pictures(len(TEXTS), args.side, seed=2)

    reference_s = timed(lambda: scorer.score(subject, round_pictures, TEXTS, device), device)  # warm-up + cache
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rounds = [timed(lambda: scorer.score(subject, round_pictures, TEXTS, device), device) for _ in range(args.rounds)]
    extra_gib = (torch.cuda.max_memory_allocated(device) - before) / GIB if device.type == "cuda" else None

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    models.place(device, dtype)
    scoring = [timed(lambda: score_with(models, subject, round_pictures, TEXTS), device) for _ in range(args.rounds)]
    models.home()

    def copy_back_round() -> None:
        """The first version's round: the models copied out and back again (module.to)."""
        for module in (models.dino, models.clip):
            module.to(device=device, dtype=dtype)
        score_with(models, subject, round_pictures, TEXTS)
        for module in (models.dino, models.clip):
            module.to(device=torch.device("cpu"))

    copy_back = [timed(copy_back_round, device) for _ in range(args.rounds)]

    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "models": "tiny" if args.tiny else "DINO ViT-S/16 + CLIP ViT-B/32 (random weights)",
        "parameters_m": round(sum(p.numel() for p in [*models.dino.parameters(), *models.clip.parameters()]) / 1e6, 1),
        "pictures": f"{len(TEXTS)} x {args.side}² against {args.photos} photos",
        "write_s": round(write_s, 2),
        "load_s": round(load_s, 2),
        "first_round_s (with the photos' embeddings)": round(reference_s, 3),
        "round_s (median: to GPU, score, drop)": round(float(np.median(rounds)), 3),
        "round_s copying back (median, the first version)": round(float(np.median(copy_back)), 3),
        "score_s (median, models on the device)": round(float(np.median(scoring)), 3),
        "extra_gib": None if extra_gib is None else round(extra_gib, 3),
    }
    for key, value in results.items():
        print(f"{key}: {value}")
    round_s = results["round_s (median: to GPU, score, drop)"]
    print(f"target: <= {TARGET_ROUND_S} s per round ({'met' if round_s <= TARGET_ROUND_S else 'MISSED'}), "
          f"<= {TARGET_EXTRA_GIB} GiB extra"
          + ("" if extra_gib is None else f" ({'met' if extra_gib <= TARGET_EXTRA_GIB else 'MISSED'})"))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
