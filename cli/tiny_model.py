"""`pawtrait make-tiny-model DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from config.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-tiny-model",
        help="write a tiny random SDXL pipeline for tests and smoke runs (it paints noise)",
        description="Write a tiny, randomly initialised SDXL pipeline (real diffusers/transformers classes, "
        "saved with save_pretrained) to DIR. Point PAWTRAIT_MODEL at DIR and PAWTRAIT_VAE at nothing to "
        "exercise training and generation without real weights; its images are noise, not pictures.",
    )
    parser.add_argument("directory", type=Path, metavar="DIR", help="folder to write (created if needed)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights (default 0)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from engine.gpu.tiny_model import make_tiny_model

    path = make_tiny_model(args.directory, seed=args.seed)
    print(f"wrote a tiny random SDXL pipeline to {path}")
    print(f"use it with: PAWTRAIT_MODEL={path} PAWTRAIT_VAE=")
    return 0
