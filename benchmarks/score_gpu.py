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

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness

from engine.gpu.scoring.models import ScoringModels
from engine.gpu.scoring.scorer import Scorer, Subject, score_with
from engine.gpu.scoring.tiny import make_scoring_models

TEXTS = ["a photo of cat", "an oil painting of cat in the style of van gogh, swirling starry sky",
         "cat wearing a tiny astronaut helmet, floating in space, digital art"]
TARGET_ROUND_S, TARGET_EXTRA_GIB = 0.5, 1.5


def phase_load(tiny: bool) -> tuple[Scorer, ScoringModels, dict]:
    """The models written with random weights (real shapes unless `tiny`) and loaded as a worker loads them."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        dino, clip = make_scoring_models(Path(folder), real=not tiny)
        write_s = time.perf_counter() - started
        scorer = Scorer(str(dino), str(clip))
        load_s, models = harness.timed(scorer.models, torch.device("cpu"))
    assert models is not None
    return scorer, models, {"write_s": round(write_s, 2), "load_s": round(load_s, 2)}


def phase_rounds(scorer: Scorer, subject: Subject, round_pictures: list[Image.Image], device: torch.device,
                 rounds: int) -> tuple[float, list[float], float | None]:
    """The first round (warm-up, the photos' embeddings cached), then `rounds` as training pays them
    (models to the GPU, scoring, GPU copy dropped) and the extra GPU memory of a round."""
    def round_() -> object:
        return scorer.score(subject, round_pictures, TEXTS, device)

    first_s, _ = harness.timed(round_, device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    harness.reset_peak(device)
    seconds = [harness.timed(round_, device)[0] for _ in range(rounds)]
    extra_gib = (torch.cuda.max_memory_allocated(device) - before) / harness.GIB if device.type == "cuda" else None
    return first_s, seconds, extra_gib


def phase_scoring(models: ScoringModels, subject: Subject, round_pictures: list[Image.Image], device: torch.device,
                  dtype: torch.dtype, rounds: int) -> list[float]:
    """The scoring alone, the models already on the device."""
    models.place(device, dtype)
    try:
        return [harness.timed(lambda: score_with(models, subject, round_pictures, TEXTS), device)[0] for _ in range(rounds)]
    finally:
        models.home()


def phase_copy_back(models: ScoringModels, subject: Subject, round_pictures: list[Image.Image], device: torch.device,
                    dtype: torch.dtype, rounds: int) -> list[float]:
    """The first version's round: the models copied out and back again (module.to)."""
    def copy_back_round() -> None:
        for module in (models.dino, models.clip):
            module.to(device=device, dtype=dtype)
        score_with(models, subject, round_pictures, TEXTS)
        for module in (models.dino, models.clip):
            module.to(device=torch.device("cpu"))

    return [harness.timed(copy_back_round, device)[0] for _ in range(rounds)]


def main() -> int:
    parser = harness.parser(__doc__, out=None)
    harness.add_cpu_dry_run(parser, "tiny models instead of the real shapes (a dry run)")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds after the warm-up (default 10)")
    parser.add_argument("--side", type=int, default=1024, help="side of the validation pictures (default 1024)")
    parser.add_argument("--photos", type=int, default=15, help="reference photos (default 15)")
    args = parser.parse_args()
    device = harness.cpu_or_cuda(args.cpu)
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    scorer, models, loading = phase_load(args.tiny)
    subject = Subject(harness.pictures(args.photos, args.side, seed=1))
    round_pictures = harness.pictures(len(TEXTS), args.side, seed=2)
    first_s, rounds, extra_gib = phase_rounds(scorer, subject, round_pictures, device, args.rounds)
    scoring = phase_scoring(models, subject, round_pictures, device, dtype, args.rounds)
    copy_back = phase_copy_back(models, subject, round_pictures, device, dtype, args.rounds)

    results = harness.Results(
        args.out,
        device=harness.card(device, cpu="cpu"),
        models="tiny" if args.tiny else "DINO ViT-S/16 + CLIP ViT-B/32 (random weights)",
        parameters_m=round(sum(p.numel() for p in [*models.dino.parameters(), *models.clip.parameters()]) / 1e6, 1),
        pictures=f"{len(TEXTS)} x {args.side}² against {args.photos} photos",
        **loading,
        **{"first_round_s (with the photos' embeddings)": round(first_s, 3),
           "round_s (median: to GPU, score, drop)": round(float(np.median(rounds)), 3),
           "round_s copying back (median, the first version)": round(float(np.median(copy_back)), 3),
           "score_s (median, models on the device)": round(float(np.median(scoring)), 3),
           "extra_gib": None if extra_gib is None else round(extra_gib, 3)},
    )
    for key, value in results.items():
        print(f"{key}: {value}")
    round_s = results["round_s (median: to GPU, score, drop)"]
    print(f"target: <= {TARGET_ROUND_S} s per round ({'met' if round_s <= TARGET_ROUND_S else 'MISSED'}), "
          f"<= {TARGET_EXTRA_GIB} GiB extra"
          + ("" if extra_gib is None else f" ({'met' if extra_gib <= TARGET_EXTRA_GIB else 'MISSED'})"))
    results.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
