"""`pawtrait export PET [--step N] [--format kohya|diffusers] --out DIR`: a pet's LoRA with its model card."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.commands import add_guild_option, on_own_loop, pet_names
from config.settings import Settings
from engine.usecases.export import FORMATS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a pet's LoRA with a model card and its validation images into a folder",
        description="Write the LoRA of PET into DIR: the A1111/ComfyUI file (kohya format, fp16, with the "
        "trigger words and training settings in its metadata) or the diffusers format (for "
        "pipeline.load_lora_weights(DIR)), the validation images of that step and from before training, and a "
        "README.md model card as the diffusers DreamBooth script writes one. Exit status: 0 when written, 1 when "
        "the pet or the checkpoint does not exist.",
    )
    parser.add_argument("pet", metavar="PET", help="the pet's name")
    parser.add_argument(
        "--step", type=int, metavar="N",
        help="the checkpoint of this training step (the newest training that saved it); default: the one the pet uses",
    )
    parser.add_argument(
        "--format", dest="fmt", choices=FORMATS, default="kohya",
        help="kohya: one .safetensors for AUTOMATIC1111, ComfyUI and co. (default); "
        "diffusers: pytorch_lora_weights.safetensors",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="the folder to write into (made if missing)"
    )
    add_guild_option(parser)
    parser.set_defaults(run=on_own_loop(_export))


async def _export(args: argparse.Namespace, settings: Settings) -> int:
    from engine.usecases.export.choice import ExportError
    from engine.usecases.export.folder import export_lora
    from storage.connect import open_storage
    from storage.pets import find_pet

    async with open_storage(settings) as (db, store):
        pet = await find_pet(db, args.guild, args.pet)
        if pet is None:
            print(
                f"pawtrait export: there is no pet called {args.pet!r} in guild {args.guild!r} "
                f"(pets there: {await pet_names(db, args.guild)})",
                file=sys.stderr,
            )
            return 1
        try:
            exported = await export_lora(
                db, store, pet, args.out, base_model=settings.model, vae=settings.vae, step=args.step, fmt=args.fmt
            )
        except ExportError as error:
            print(f"pawtrait export: {error}", file=sys.stderr)
            return 1
    for path in (exported.lora, exported.card, *exported.images):
        print(path)
    print(f"{pet.name}, step {exported.step}: write '{exported.trigger}' in the prompt where {pet.name} goes")
    return 0
