"""`pawtrait imagine "PROMPT" [--pet NAME] ...`: paint on this machine, without Discord."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import shutil
import sys
from pathlib import Path

from cli.commands import pet_names
from config.settings import Settings
from engine.usecases.generation.request import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    DEFAULT_VARIATION_STRENGTH,
    SIZE_PRESETS,
    GenerationError,
    GenerationRequest,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "imagine",
        help="paint a picture (of a pet: write TOK where it goes) and print the files and seeds",
        description="Generate 1-4 images with the base model, or with a pet's trained LoRA when --pet is given "
        "(write TOK in the prompt where the pet should appear). The images are recorded like the bot's, "
        "under the data folder's generations/, and copied to --out if given.",
    )
    parser.add_argument("prompt", help='what to paint, e.g. "a watercolor of TOK cat on a windowsill"')
    parser.add_argument("--pet", metavar="NAME", help="pet whose LoRA to use (a local pet, see `pawtrait pets`)")
    parser.add_argument("--count", type=int, default=1, help="images to make in one batch, 1-4 (default 1)")
    parser.add_argument("--seed", type=int, help="seed of the first image (image i uses seed+i); random if left out")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"denoising steps (default {DEFAULT_STEPS})")
    parser.add_argument("--size", default="1:1", choices=list(SIZE_PRESETS), help="aspect ratio preset (default 1:1)")
    parser.add_argument("--negative", default="", metavar="TEXT", help="what to keep out of the picture")
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                        help=f"how closely to follow the prompt (default {DEFAULT_GUIDANCE:g})")
    parser.add_argument("--strength", type=float, default=1.0, help="LoRA strength 0-2 (default 1; 0 = base model)")
    parser.add_argument("--checkpoint", type=int, metavar="ID", help="use this checkpoint instead of the pet's active one")
    parser.add_argument("--vary", type=_source, metavar="GEN[:N]",
                        help="paint variations of image N (default 1) of earlier generation GEN, at its size")
    parser.add_argument("--variation-strength", type=float, default=DEFAULT_VARIATION_STRENGTH, metavar="X",
                        help=f"how far a variation may stray from its source, 0.05-1 (default {DEFAULT_VARIATION_STRENGTH})")
    parser.add_argument("--out", type=Path, metavar="DIR", help="also copy the PNGs into DIR")
    parser.add_argument("--detach", action="store_true",
                        help="queue the request for a worker and print its job id instead of painting here")
    parser.set_defaults(run=run)


def _source(text: str) -> tuple[int, int]:
    """'12' or '12:3' -> (generation 12, image 1 or 3)."""
    generation, _, image = text.partition(":")
    try:
        return int(generation), int(image or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a generation id, optionally with :image (e.g. 12 or 12:3), not {text!r}"
        ) from None


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return asyncio.run(_imagine(args, settings))
    except GenerationError as error:
        print(f"pawtrait imagine: {error}", file=sys.stderr)
        return 1


async def _imagine(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from engine.gpu.generation.service import generate_and_record
    from engine.gpu.models import ModelNotFound
    from engine.gpu.process_models import ProcessModels
    from engine.usecases.queueing import check_prompt
    from storage.connect import open_storage
    from storage.files import DataDir
    from storage.pets import LOCAL_GUILD, find_pet

    async with open_storage(settings) as (db, store):
        pet = None
        if args.pet:
            pet = await find_pet(db, LOCAL_GUILD, args.pet)
            if pet is None:
                names = await pet_names(db, LOCAL_GUILD)
                raise GenerationError(f"There is no local pet called {args.pet!r} (local pets: {names}).")
        request = GenerationRequest(
            prompt=args.prompt, pet_id=pet.id if pet else None, negative_prompt=args.negative, seed=args.seed,
            steps=args.steps,
            guidance=args.guidance, size=args.size, count=args.count, lora_scale=args.strength,
            checkpoint_id=args.checkpoint,
            source_generation_id=args.vary[0] if args.vary else None,
            source_image=args.vary[1] if args.vary else 1,
            variation_strength=args.variation_strength,
        )
        await check_prompt(db, request, LOCAL_GUILD)  # before loading the model (--detach: queueing screens too)
        if args.detach:
            return await _detach(db, settings, request, pet)
        print("loading the model...", file=sys.stderr)
        try:
            generator = ProcessModels.load(settings).generator
        except ModelNotFound as error:
            raise GenerationError(f"{error} Nothing was painted.") from None
        with tqdm(total=request.denoising_steps, unit="step", file=sys.stderr) as bar:
            outcome = await generate_and_record(
                db, store, DataDir(settings.data_dir), generator, request, LOCAL_GUILD, getpass.getuser(),
                on_step=lambda step, total, _preview: bar.update(step - bar.n),
            )
        for warning in outcome.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
        for file, seed in zip(outcome.files, outcome.seeds):
            path = await store.local_path(file)
            if args.out:
                path = Path(shutil.copy2(path, args.out / f"pawtrait-{outcome.generation_id}-{path.name}"))
            print(f"{path}\tseed {seed}")
    return 0


async def _detach(db, settings: Settings, request: GenerationRequest, pet) -> int:
    """Queue the request for a worker (`--detach`)."""
    import getpass

    from cli.jobs import print_detached
    from engine.usecases.queueing import queue_generation
    from storage import jobs
    from storage.pets import LOCAL_GUILD

    try:
        job = await queue_generation(db, settings, request, pet, LOCAL_GUILD, getpass.getuser())
    except jobs.QueueLimitReached as error:
        print(f"pawtrait imagine: {error}", file=sys.stderr)
        return 2
    return print_detached(job, await jobs.queue_position(db, job.id))
