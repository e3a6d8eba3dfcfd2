"""`pawtrait train NAME`: train a pet's LoRA in the foreground, with a progress bar.

For operators and notebooks like the seed's. Ctrl-C stops at the next step boundary and
keeps the checkpoints written so far; `pawtrait train NAME --resume` continues from the
newest one. It trains compiled when a worker on this machine compiled the run's plan before
(engine/gpu/training/compiled_plans.py), else uncompiled: it has no idle time to compile in.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading

from cli.commands import on_own_loop, pet_names
from config.settings import Settings
from engine.usecases.training.params import MODES, TrainingParams, checkpoint_interval

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = TrainingParams()
    parser = subparsers.add_parser(
        "train",
        help="train a pet's LoRA here in the foreground (Ctrl-C stops; --resume continues)",
        description="Train the SDXL DreamBooth LoRA of a local pet (see `pawtrait pets`) from its photos. "
        "Defaults follow the seed recipe: 500 steps, rank 4, learning rate 1e-4, 4 images per step, min-SNR 5. "
        "Checkpoints (diffusers and A1111/ComfyUI files) and validation images go under the data folder's runs/.",
    )
    parser.add_argument("name", metavar="NAME", help="the pet's name")
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"optimizer steps (default {defaults.steps})")
    parser.add_argument("--rank", type=int, default=defaults.rank, help=f"LoRA rank (default {defaults.rank})")
    parser.add_argument("--alpha", type=float, help="LoRA alpha (default: the rank, i.e. scale 1)")
    parser.add_argument("--lr", dest="learning_rate", type=float, default=defaults.learning_rate, metavar="LR",
                        help="learning rate (default 1e-4)")
    parser.add_argument("--prior-preservation", action="store_true", help="train against class images too")
    parser.add_argument("--class-images", type=int, default=defaults.class_images,
                        help=f"class images for prior preservation, shared per class (default {defaults.class_images})")
    every = f"a fifth of the steps, at least 2, as the bot's /train: {checkpoint_interval(defaults.steps)} of {defaults.steps}"
    parser.add_argument("--checkpoint-every", type=int, metavar="N",
                        help=f"save a checkpoint every N steps (default {every})")
    parser.add_argument("--validate-every", type=int, metavar="N",
                        help=f"render validation images every N steps, 0 = start and end only (default {every})")
    parser.add_argument("--keep-checkpoints", type=int, default=0, metavar="K",
                        help="keep only the newest K checkpoints (default 0 = all)")
    parser.add_argument("--resolution", type=int, help="training resolution (default PAWTRAIT_RESOLUTION)")
    parser.add_argument("--mode", choices=MODES, help="fast, lean or auto from free GPU memory "
                        "(default PAWTRAIT_TRAIN_MODE)")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="force gradient checkpointing on or off (default: chosen by the mode)")
    parser.add_argument("--flip", action="store_true", help="random horizontal flips")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"random seed (default {defaults.seed})")
    parser.add_argument("--guild", default=None, metavar="ID",
                        help="the pet's Discord server id (default: the local pets of the command line)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the pet's latest unfinished run (other options are ignored)")
    parser.add_argument("--detach", action="store_true",
                        help="queue the training for a worker and print its job id instead of training here")
    parser.set_defaults(run=on_own_loop(_train))


# The options that choose a TrainingParams field, each stored under the field's name.
PARAM_OPTIONS = (
    "rank", "alpha", "learning_rate", "prior_preservation", "class_images", "checkpoint_every", "validate_every",
    "keep_checkpoints", "resolution", "mode", "gradient_checkpointing", "flip", "seed",
)


def params_from_args(args: argparse.Namespace, settings: Settings) -> TrainingParams:
    """The run the bot's /train would start, with what the options chose (those left out are None)."""
    return TrainingParams.for_steps(args.steps, settings, **{name: getattr(args, name) for name in PARAM_OPTIONS})


def _fail(message: str) -> int:
    print(f"pawtrait train: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


async def _train(args: argparse.Namespace, settings: Settings) -> int:
    import getpass

    from cli.jobs import print_detached
    from engine.usecases.queueing import queue_training
    from engine.usecases.training.create import create_run
    from engine.usecases.training.params import TrainingInputError
    from storage import jobs, runs
    from storage.connect import open_storage
    from storage.pets import LOCAL_GUILD, find_pet

    async with open_storage(settings) as (db, store):
        guild = args.guild or LOCAL_GUILD
        pet = await find_pet(db, guild, args.name)
        if pet is None:
            return _fail(f"there is no pet called {args.name!r} here (pets: {await pet_names(db, guild)}); "
                         "teach one first with `pawtrait teach`")
        resume_run_id = None
        if args.resume:
            unfinished = await runs.latest_unfinished_run(db, pet.id)
            if unfinished is None:
                return _fail(f"{pet.name} has no unfinished training run to resume; start one without --resume")
            resume_run_id = unfinished.id
            print(f"resuming run {resume_run_id} of {pet.name} from step {unfinished.step}", file=sys.stderr)
        try:
            if args.detach:
                job = await queue_training(db, store, settings, pet, params_from_args(args, settings),
                                           getpass.getuser(), resume_run_id=resume_run_id)
                return print_detached(job, await jobs.queue_position(db, job.id))
            run_id = resume_run_id or await create_run(db, store, pet, params_from_args(args, settings))
        except (TrainingInputError, jobs.QueueLimitReached) as error:
            return _fail(str(error))
        return await _execute(db, store, settings, run_id, pet.name)


async def _execute(db, store, settings: Settings, run_id: int, pet_name: str) -> int:
    from tqdm import tqdm

    from engine.gpu.models import ModelNotFound
    from engine.gpu.process_models import ProcessModels
    from engine.gpu.training.service import execute_run
    from engine.usecases.training.hooks import TrainingHooks
    from engine.usecases.training.params import TrainingInputError
    from storage import runs
    from storage.files import DataDir

    print("loading the model...", file=sys.stderr)
    try:
        models = await asyncio.to_thread(ProcessModels.load, settings)
    except ModelNotFound as error:
        return _fail(f"{error} Run {run_id} is kept: `pawtrait train {pet_name} --resume` starts it once the model loads.")
    run = await runs.get_run(db, run_id)
    cancel = threading.Event()
    loop = asyncio.get_running_loop()

    def on_interrupt() -> None:
        if not cancel.is_set():
            cancel.set()
            tqdm.write("stopping after this step (checkpoints are kept)...", file=sys.stderr)

    try:
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        handling_ctrl_c = True
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread, or no signals here
        handling_ctrl_c = False
    with tqdm(total=run.total_steps, initial=run.step, unit="step", file=sys.stderr, dynamic_ncols=True) as bar:
        hooks = TrainingHooks(
            on_progress=lambda info: (
                bar.update(info.step - bar.n),
                bar.set_postfix(loss=f"{info.loss:.4f}", img_s=f"{info.images_per_s:.1f}"),
            ),
            on_checkpoint=lambda step, checkpoint_id: tqdm.write(
                f"checkpoint at step {step} (id {checkpoint_id})", file=sys.stderr
            ),
            on_validation=lambda step, images: _print_validation(store, step, images),
            should_cancel=cancel.is_set,
        )
        try:
            # The generator paints the validation rounds and class images. A plan a worker compiled
            # here is compiled again from the cache first, and trains compiled (compiled_plans.py).
            outcome = await execute_run(db, store, DataDir(settings.data_dir), models.generator, run_id, hooks,
                                        scorer=models.scorer,
                                        compile_ahead=models.training_compile(settings, wait_for_recorded=True))
        except TrainingInputError as error:
            return _fail(str(error))
        finally:
            if handling_ctrl_c:
                loop.remove_signal_handler(signal.SIGINT)
    if outcome.status == "succeeded" and outcome.kept is not None:
        kept = outcome.kept.checkpoint
        print(f"{pet_name} is trained (run {run_id}, {outcome.step} steps) and uses step {kept.step}: "
              f"{outcome.kept.reason}. `pawtrait eval {run_id}` shows every checkpoint's scores.")
        print(f"diffusers LoRA: {await store.local_path(kept.diffusers_key)}")
        print(f"A1111/ComfyUI LoRA: {await store.local_path(kept.kohya_key)}")
        return EXIT_OK
    if outcome.status == "succeeded":  # every checkpoint was deleted meanwhile
        print(f"pawtrait train: {pet_name} trained, but none of its checkpoints is left", file=sys.stderr)
        return EXIT_FAILED
    if outcome.status == "cancelled":
        print(f"cancelled after step {outcome.step}; checkpoints are kept. "
              f"Continue with: pawtrait train {pet_name!r} --resume", file=sys.stderr)
        return EXIT_CANCELLED
    print(f"pawtrait train: {outcome.error}", file=sys.stderr)
    return EXIT_FAILED


async def _print_validation(store, step: int, images) -> None:
    from tqdm import tqdm

    paths = [str(await store.local_path(image.path)) for image in images]
    tqdm.write(f"validation images at step {step}: " + ", ".join(paths), file=sys.stderr)
