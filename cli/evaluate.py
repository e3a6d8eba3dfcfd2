"""`pawtrait eval`: a run's checkpoint scores, or the DreamBooth paper's benchmark for a set of LoRAs.

`pawtrait eval RUN` reads what training recorded (no GPU). `pawtrait eval --dreambench DIR`
paints the paper's prompts with each subject's LoRA on this installation's base model and
scores the pictures, so anyone with weights can put Pawtrait next to the paper's Table 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from config.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
# DreamBooth (Ruiz et al. 2023), Table 1: DreamBooth on Stable Diffusion, and real photos against each other.
PAPER = "the paper (DreamBooth on Stable Diffusion): DINO 0.668, CLIP-I 0.803, CLIP-T 0.305; real photos: DINO 0.774"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="a run's checkpoint scores and suggested step, or the DreamBench protocol for LoRAs",
        description="With RUN: print each validated step of training run RUN with its scores (likeness to the "
        "pet's photos by DINO and CLIP-I, prompt adherence by CLIP-T; step 0 is the untrained model), its votes, "
        "the step the suggestion rule picks and the one the run chose. "
        "With --dreambench DIR: run the DreamBooth paper's benchmark. DIR is the dataset folder of "
        "github.com/google/dreambooth (or the repository, which holds it as dataset/): one folder of photos per "
        "subject (DIR/<subject>/*.jpg) and DIR/prompts_and_classes.txt, which lists 'subject_name,class' lines "
        "under 'Classes' and two lists of prompt templates, 'Object Prompts' and 'Live Subject Prompts' (cats and "
        "dogs), one per line as 'a {0} {1} in the snow'.format(unique_token, class_token). For every subject "
        "given a LoRA and each of its prompts, --images pictures are painted with the base model of this "
        "installation (PAWTRAIT_MODEL) and the LoRA, then DINO, CLIP-I and CLIP-T are printed per subject and "
        "as the mean, as the paper's Table 1 reports them. Scoring models: PAWTRAIT_SCORE_DINO and "
        "PAWTRAIT_SCORE_CLIP.",
    )
    parser.add_argument("run_id", nargs="?", type=int, metavar="RUN", help="a training run id (see `pawtrait jobs`)")
    parser.add_argument("--dreambench", type=Path, metavar="DIR", help="the DreamBench dataset folder")
    parser.add_argument("--lora", action="append", default=[], metavar="SUBJECT=PATH",
                        help="a subject's LoRA: a .safetensors file or a folder with one (repeat per subject)")
    parser.add_argument("--loras", type=Path, metavar="DIR",
                        help="a folder of LoRAs named by subject: DIR/<subject>.safetensors or DIR/<subject>/")
    parser.add_argument("--token", default="sks", help="the unique token the LoRAs were trained with (default sks)")
    parser.add_argument("--images", type=int, default=4, metavar="N",
                        help="pictures per subject and prompt (default 4, as the paper)")
    parser.add_argument("--steps", type=int, default=30, metavar="N", help="denoising steps per picture (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="first seed; every picture has its own (default 0)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if (args.run_id is None) == (args.dreambench is None):
        return _fail("give either a run id or --dreambench DIR")
    if args.run_id is not None:
        return asyncio.run(_run_table(args.run_id, settings))
    return _dreambench(args, settings)


def _fail(message: str) -> int:
    print(f"pawtrait eval: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _score(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# --- a run's checkpoints ----------------------------------------------------------------


async def _run_table(run_id: int, settings: Settings) -> int:
    from engine.usecases.scoring.choice import run_standing, vote_emoji
    from engine.usecases.scoring.suggest import RULE
    from storage import runs
    from storage.connect import open_storage
    from storage.pets import get_pet

    async with open_storage(settings) as storage:
        db = storage.db
        run = await runs.get_run(db, run_id)
        pet = None if run is None else await get_pet(db, run.pet_id)  # a run goes with its pet
        if run is None or pet is None:
            return _fail(f"there is no training run {run_id}")
        # The votes and the suggestion exactly as the choosing rule counts them (the server's vote emoji).
        votes, scores, suggestion = await run_standing(db, run_id, pet, await vote_emoji(db, pet))
        checkpoints = await runs.list_checkpoints(db, run_id)
    chosen = next((c.step for c in checkpoints if c.id == run.chosen_checkpoint_id), None)
    by_step = {step.step: step for step in scores.steps}
    rows = [("STEP", "DINO", "CLIP-I", "CLIP-T", "VOTES", "")]
    if scores.reference is not None:
        ref = scores.reference
        rows.append(("0", _score(ref.dino), _score(ref.clip_i), _score(ref.clip_t), "-", "untrained"))
    for step in sorted(set(by_step) | set(votes)):
        row = by_step.get(step)
        notes = [note for note, at in (("suggested", suggestion and suggestion.step), ("chosen", chosen)) if at == step]
        rows.append((
            str(step), _score(row and row.dino), _score(row and row.clip_i), _score(row and row.clip_t),
            str(votes.get(step, 0)), ", ".join(notes),
        ))
    print(f"run {run_id} of {pet.name}: {run.status}, step {run.step} of {run.total_steps}")
    print(_table(rows))
    if suggestion is not None:
        print(f"suggested: {suggestion.reason} ({RULE})")
    else:
        print("no scores for this run (scoring was off, or its models could not be loaded), so no suggestion")
    print(f"chosen: step {chosen}" if chosen is not None else "chosen: none yet")
    return EXIT_OK


# --- DreamBench ------------------------------------------------------------------------------


def _dreambench(args: argparse.Namespace, settings: Settings) -> int:
    from engine.gpu.scoring.dreambench import DreamBenchError, lora_file, loras_in, read_benchmark

    if args.images < 1 or args.steps < 1:
        return _fail("--images and --steps must be at least 1")
    try:
        benchmark = read_benchmark(args.dreambench)
        loras = loras_in(args.loras, list(benchmark.classes)) if args.loras else {}
        for given in args.lora:
            subject, sep, path = given.partition("=")
            if not sep or subject not in benchmark.classes:
                return _fail(f"--lora {given!r}: expected SUBJECT=PATH with a subject of {benchmark.folder}")
            loras[subject] = lora_file(Path(path).expanduser())
    except DreamBenchError as error:
        return _fail(str(error))
    if not loras:
        return _fail("give each subject's LoRA with --lora SUBJECT=PATH or --loras DIR")
    return _paint_and_score(args, settings, benchmark, loras)


def _paint_and_score(args: argparse.Namespace, settings: Settings, benchmark, loras: dict[str, Path]) -> int:
    from engine.gpu.generation.generator import PetLora
    from engine.gpu.models import ModelNotFound
    from engine.gpu.process_models import ProcessModels
    from engine.gpu.scoring.dreambench import DreamBenchError, evaluate_subject, mean_of

    print("loading the model...", file=sys.stderr)
    try:
        # Scores asked for explicitly: PAWTRAIT_SCORES does not apply.
        models = ProcessModels.load(settings, scores=True)
    except ModelNotFound as error:
        return _fail(str(error))
    generator, scorer = models.generator, models.scorer
    results = []
    rows = [("SUBJECT", "CLASS", "PICTURES", "DINO", "CLIP-I", "CLIP-T")]
    for number, (subject, path) in enumerate(sorted(loras.items()), start=1):
        print(f"{subject} ({number} of {len(loras)}): painting with {path}", file=sys.stderr)
        try:
            result = evaluate_subject(
                generator, scorer, benchmark, subject, PetLora(str(path), path), token=args.token,
                pictures_per_prompt=args.images, steps=args.steps, seed=args.seed,
            )
        except DreamBenchError as error:
            print(f"pawtrait eval: {error}", file=sys.stderr)
            return EXIT_FAILED
        results.append(result)
        rows.append((subject, result.class_noun, str(result.pictures), _score(result.dino, 3),
                     _score(result.clip_i, 3), _score(result.clip_t, 3)))
    dino, clip_i, clip_t = mean_of(results)
    rows.append((f"mean of {len(results)}", "", str(sum(r.pictures for r in results)), _score(dino, 3),
                 _score(clip_i, 3), _score(clip_t, 3)))
    print(_table(rows))
    print(PAPER)
    return EXIT_OK
