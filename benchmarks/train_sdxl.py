"""Training speed and memory on a GPU: full-size SDXL (random weights) through Pawtrait's trainer.

No weights can be downloaded where this runs, so it builds the SDXL-base-1.0 architecture
with random weights directly on the GPU in bf16, or as PAWTRAIT_DTYPE says, under
PAWTRAIT_GPU_MEMORY_GIB's cap when set (speed and memory do not depend on weight values), writes 15 random 1024² photos, and drives the product's own code: `build_cache`,
`LoraTrainer.train_step` (the loop `execute_run` runs), validation rounds and class images
through the `Generator` beside the diffusers pipeline called directly (how they were painted
before), and, for the end-to-end figure, `execute_run` itself with checkpoints and validation.

    python benchmarks/train_sdxl.py --out results.json [--configs lean2,fast4,...] [--full-steps 60]

Each configuration: 3 warm-up steps, then `--steps` timed optimizer steps of 4 images
(the seed's batch 1 x accumulation 4). Prints a table last; a configuration that fails
records its error and the rest go on.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness
from harness import embedded_install, mean_levels_apart, peak_gib, pet_with, reset_peak, sync, timed
from sdxl_random import base_model

from config.settings import Settings
from engine.gpu.compile import compiled_blocks
from engine.gpu.generation.compile_ahead import CompileAhead
from engine.gpu.generation.generator import Generator
from engine.gpu.generation.renders import Render
from engine.gpu.models import BaseModel
from engine.gpu.training.cache import build_cache, offload_encoders, restore_encoders
from engine.gpu.training.checkpoints import write_checkpoint
from engine.gpu.training.class_images import BATCH, ensure_class_images
from engine.gpu.training.compile_ahead import TrainingCompileAhead
from engine.gpu.training.loop import TRAINING_ADAPTER, LoopPlan, LoraTrainer
from engine.usecases.training.params import TrainingParams
from storage import runs

PROMPT = "a photo of zqxjv cat"
VALIDATION = [PROMPT, "an oil painting of zqxjv cat", "zqxjv cat in space"]

# name: (gradient checkpointing, micro-batch (0 = all images of the step), encoders offloaded,
#        extra TrainingParams, channels-last)
# The product captures the forward/backward as a CUDA graph by default; "-eager" turns that off.
# Blocks run compiled only where a configuration says so (compiled on first use here; in the worker, ahead).
EAGER = {"cuda_graphs": False}
CONFIGS = {
    "lean1": (True, 1, True, {}, False),
    "lean2": (True, 2, True, {}, False),
    "lean4": (True, 4, True, {}, False),
    "lean4-eager": (True, 4, True, EAGER, False),
    "fast1": (False, 1, False, {}, False),
    "fast4": (False, 0, False, {}, False),
    "fast4-eager": (False, 0, False, EAGER, False),
    "fast4-adamw": (False, 0, False, {"optimizer": "adamw"}, False),
    "fast4-cl": (False, 0, False, {}, True),
    "fast4-compile": (False, 0, False, {"compile": True}, False),
    # FP8 matmuls over the frozen base weights (torchao's Float8Linear; the UNet is converted for good).
    "fast4-fp8": (False, 0, False, {}, False),
    "fast4-fp8-compile": (False, 0, False, {"compile": True}, False),
    "lean4-compile": (True, 4, True, {"compile": True}, False),
    "fast4-compile-eager": (False, 0, False, {"compile": True, **EAGER}, False),
}


PNG = "round: PNG encode (each picture)"


@contextmanager
def timeline(seconds: dict[str, list[float]]) -> Iterator[None]:
    """Time the parts of a training run (GPU synchronised around each) into `seconds`, by label:
    what a run spends besides its steps. The syncs cost little: each part already waits for the
    GPU (a loss read, pictures or a checkpoint copied to the host)."""
    from diffusers import StableDiffusionXLPipeline

    import engine.gpu.cuda_graphs as graphs_module
    import engine.gpu.generation.generator as generator_module
    import engine.gpu.training.service as service_module

    def add(label: str, start: float, synced: bool = True) -> None:
        if synced:
            sync()
        seconds.setdefault(label, []).append(time.perf_counter() - start)

    def timing(label: str, fn: Callable) -> Callable:
        synced = label != PNG  # encoded in threads beside the training: a sync there would wait for its steps
        def wrapper(*args, **kwargs):
            if synced:
                sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                add(label, start, synced)
        return wrapper

    @contextmanager
    def merged(pipe, name: str) -> Iterator[None]:
        sync()
        start = time.perf_counter()
        with saved_merge(pipe, name):
            add("round: merge the LoRA", start)
            yield
            sync()
            start = time.perf_counter()
        add("round: unmerge", start)

    saved_merge = generator_module.merged_adapter
    patches = [
        (service_module._Session, "validate", "round on the training thread (storing too before 28b1e47)"),
        (service_module._Session, "save_checkpoint", "checkpoint"),
        (service_module._Session, "progress", "progress reports (after the loss read)"),
        (service_module, "build_cache", "photo cache"),
        (service_module, "LoraTrainer", "trainer set-up"),
        (generator_module.Generator, "render", "round: render"),
        (generator_module.Generator, "_decode", "round: VAE decode"),
        (StableDiffusionXLPipeline, "__call__", "round: denoising (the pipeline call)"),
        (graphs_module, "on_side_stream", "round: the UNet graph's warm-up call"),
        (graphs_module.CapturedCall, "__init__", "CUDA graph captures (step and round)"),
        (Image.Image, "save", PNG),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, label in patches:
        setattr(owner, name, timing(label, getattr(owner, name)))
    generator_module.merged_adapter = merged
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
        generator_module.merged_adapter = saved_merge


def float8_base(unet: torch.nn.Module) -> None:
    """Swap the UNet's Linear layers for torchao's Float8Linear (e4m3 forward, e5m2 gradients, dynamic
    per-tensor scales) before the LoRA wraps them: the frozen base's matmuls in FP8, forward and
    backward. In place and for good: run such configurations last."""
    from torchao.float8 import convert_to_float8_training

    if not getattr(unet, "bench_float8", False):
        convert_to_float8_training(
            unet, module_filter_fn=lambda module, _name: isinstance(module, torch.nn.Linear)
            and module.in_features % 16 == 0 and module.out_features % 16 == 0,
        )
        unet.bench_float8 = True


def bench_config(base: BaseModel, cache, name: str, steps: int, prior: bool, res: int) -> dict:
    checkpointing, micro, offload, extra, channels_last = CONFIGS[name]
    params = TrainingParams(prior_preservation=prior, resolution=res, **{"compile": False, **extra})
    images = params.unet_images_per_step
    plan = LoopPlan(mode="lean" if checkpointing else "fast", gradient_checkpointing=checkpointing,
                    micro_batch=min(micro or images, images), offload_encoders=offload, reason="benchmark")
    unet = base.pipe.unet
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    if "fp8" in name:
        float8_base(unet)
    if offload:
        offload_encoders(base)
    reset_peak(empty_cache=True)
    # Compiled on first use, as the worker's idle time does it (training/compile_ahead.py).
    compiled = compiled_blocks(base.pipe.unet) if params.compile else None
    trainer = LoraTrainer(base, params, cache, plan, compiled)
    try:
        warm_s, _ = timed(lambda: [trainer.train_step(step) for step in range(3)])
        total_s, losses = timed(lambda: [trainer.train_step(step) for step in range(3, 3 + steps)])
        values = [float(value) for value in losses]  # after the timing: each read waits for the GPU
        peak = peak_gib()
    finally:
        trainer.close()
        if channels_last:
            unet.to(memory_format=torch.contiguous_format)
        restore_encoders(base)
    per_step = total_s / steps
    return {
        "config": name + ("+prior" if prior else ""), "checkpointing": checkpointing, "micro_batch": plan.micro_batch,
        "images_per_step": images, "s_per_step": per_step, "ms_per_image": 1000 * per_step / images,
        "peak_gib": peak, "warmup_s": warm_s, "loss": values[-1],
        # The loss curve in ten windows (same seed and photos in every configuration: FP8 against
        # bf16 is judged on it, issue 27) and how many losses were not finite.
        "loss_curve": [statistics.fmean(values[start:start + max(steps // 10, 1)])
                       for start in range(0, steps, max(steps // 10, 1))],
        "non_finite_losses": sum(not math.isfinite(value) for value in values),
    }


def check_graphs(base: BaseModel, cache, res: int, steps: int = 6) -> dict:
    """Same init, same steps: eager vs CUDA graph replays, and the product's 8-bit AdamW vs the stock
    bitsandbytes one (which syncs after every tensor). The LoRA weights they end with must agree."""
    import bitsandbytes as bnb

    loras = {}
    for name, graphs, stock in (("eager", False, False), ("graphs", True, False), ("stock_bnb", False, True)):
        params = TrainingParams(resolution=res, cuda_graphs=graphs)
        plan = LoopPlan("fast", False, params.images_per_step, False, "graph check")
        trainer = LoraTrainer(base, params, cache, plan)
        if stock:
            trainer.optimizer = bnb.optim.AdamW8bit([trainer.master], lr=params.learning_rate, betas=(0.9, 0.999),
                                                    weight_decay=1e-4, eps=1e-8)
            trainer.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda _: 1.0)
        try:
            losses = [float(trainer.train_step(step)) for step in range(steps)]
            loras[name] = (trainer.lora_state_dict(), losses)
        finally:
            trainer.close()

    def compare(a: dict, b: dict) -> dict:
        num = sum(float((a[k] - b[k]).double().norm() ** 2) for k in a) ** 0.5
        den = sum(float(a[k].double().norm() ** 2) for k in a) ** 0.5
        differing = sum(bool((a[k] != b[k]).any()) for k in a)
        return {"relative_difference": num / den, "tensors_differing": differing, "tensors": len(a)}

    eager = loras["eager"][0]
    return {"steps": steps, "graphs_vs_eager": compare(eager, loras["graphs"][0]),
            "stock_bnb_vs_ours": compare(loras["stock_bnb"][0], eager),
            "losses": {name: losses for name, (_, losses) in loras.items()}}


def check_kept_round_graph(base: BaseModel, generator: Generator, cache, res: int) -> dict:
    """A round replayed from the UNet graph the previous round kept (fast mode) against the same round
    from a freshly captured graph, the LoRA trained 3 more steps in between: the same pictures?"""
    trainer = LoraTrainer(base, TrainingParams(resolution=res), cache, LoopPlan("fast", False, 4, False, "benchmark"))
    job = Render(cache.validation, cache.validation_negative, [42, 43, 44], res, 3)

    def round_(keep: bool) -> list[Image.Image]:
        pictures = generator.render(job, adapter=TRAINING_ADAPTER, keep_graphs=keep)
        trainer.activate()
        return pictures

    try:
        for step in range(2):
            trainer.train_step(step)
        first_s, first = timed(lambda: round_(True))
        for step in range(2, 5):
            trainer.train_step(step)
        kept_s, kept = timed(lambda: round_(True))
        generator.release_graphs()
        fresh_s, fresh = timed(lambda: round_(False))
    finally:
        trainer.close()
        generator.release_graphs()
    return {"first_s": first_s, "kept_s": kept_s, "fresh_s": fresh_s,
            "kept_vs_fresh_levels": mean_levels_apart(kept, fresh),
            "kept_vs_first_round_levels": mean_levels_apart(first, kept)}


def diffusers_validation(base: BaseModel, cache, seeds: list[int], res: int, batch: int) -> list[Image.Image]:
    """A validation round as it was painted before the Generator did it: the pipeline called directly."""
    pictures = []
    for start in range(0, len(seeds), batch):
        part = slice(start, start + batch)
        pictures += base.pipe(
            prompt_embeds=cache.validation.embeds[part], pooled_prompt_embeds=cache.validation.pooled[part],
            negative_prompt_embeds=cache.validation_negative.embeds[part],
            negative_pooled_prompt_embeds=cache.validation_negative.pooled[part],
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds[part]],
            num_inference_steps=25, guidance_scale=5.0, height=res, width=res,
        ).images
    return pictures


@contextmanager
def previous_validation() -> Iterator[None]:
    """Validation as it was before its LoRA was merged (up to aee50af), for side-by-side figures: the
    training's adapter left live in the round, and compiled ahead live."""
    import engine.gpu.generation.generator as generator_module
    import engine.gpu.training.compile_ahead as compile_ahead_module

    @contextmanager
    def live_adapter(pipe, _name: str) -> Iterator[None]:
        pipe.enable_lora()  # switched off by the generator just before: on again, computed beside each layer
        yield

    @contextmanager
    def live_painting(trainer: LoraTrainer) -> Iterator[None]:
        trainer.unet.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            trainer.unet.train()

    saved = generator_module.merged_adapter, compile_ahead_module.painting
    generator_module.merged_adapter, compile_ahead_module.painting = live_adapter, live_painting
    try:
        yield
    finally:
        generator_module.merged_adapter, compile_ahead_module.painting = saved


def bench_validation(
    base: BaseModel, generator: Generator, cache, res: int, trained_steps: int, ahead: TrainingCompileAhead | None = None,
) -> tuple[dict, dict[int, list[Image.Image]]]:
    """One round of 3 pictures with a training's LoRA after `trained_steps` fast-mode steps: the
    diffusers pipeline called directly with the LoRA live (before da6327c), `Generator.render` with
    it live (da6327c to aee50af) and merged (since), at batch 3 and 1. With `ahead` (the run's plan
    compiled), the rounds of a compiled run instead: live against merged, at batch 3."""
    seeds = [42, 43, 44]
    params = TrainingParams(resolution=res)
    plan = LoopPlan("fast", False, 4, False, "benchmark")
    trainer = LoraTrainer(base, params, cache, plan, compiled=ahead.blocks if ahead else None)
    rows: dict = {"trained_steps": trained_steps}
    pictures: dict[int, list[Image.Image]] = {}
    try:
        for step in range(trained_steps):
            trainer.train_step(step)
        trainer.make_room()
        for batch in (3,) if ahead else (3, 1):
            job = Render(cache.validation, cache.validation_negative, seeds, res, batch)
            row = {}
            if batch == 3 and not ahead:
                reset_peak(empty_cache=True)
                row["diffusers_s"], diffusers = timed(lambda: diffusers_validation(base, cache, seeds, res, batch))
                row["diffusers_peak_gib"] = peak_gib()
                trainer.activate()
            for way in ("live", "merged"):
                reset_peak(empty_cache=True)
                with previous_validation() if way == "live" else nullcontext():
                    first_s, _ = timed(lambda: generator.render(job, adapter=TRAINING_ADAPTER, blocks=trainer.compiled))
                    trainer.activate()
                    row[f"{way}_s"], row[way] = timed(
                        lambda: generator.render(job, adapter=TRAINING_ADAPTER, blocks=trainer.compiled))
                    trainer.activate()
                row[f"{way}_first_s"], row[f"{way}_peak_gib"] = first_s, peak_gib()
            row["merged_vs_live_levels"] = mean_levels_apart(row.pop("live"), row["merged"])
            if "diffusers_s" in row:
                row["merged_vs_diffusers_levels"] = mean_levels_apart(diffusers, row["merged"])
            pictures[batch] = row.pop("merged")
            rows[f"batch{batch}"] = row
            print(f"validation batch {batch}{' compiled' if ahead else ''}: {row}", flush=True)
    finally:
        trainer.close()
    return rows, pictures


def draw_class_images(generator: Generator, folder: Path, count: int, res: int) -> tuple[float, list[Path]]:
    """`ensure_class_images` for `count` cats into a new installation in `folder`: seconds, paths."""

    async def draw() -> list[Path]:
        db, store, _ = await embedded_install(folder)

        async def never() -> bool:
            return False

        try:
            return await ensure_class_images(db, store, generator, "cat", count, res, should_stop=never)
        finally:
            await db.close()

    seconds, paths = timed(lambda: asyncio.run(draw()))
    generator.release_graphs()
    return seconds, paths


def bench_class_images(base: BaseModel, generator: Generator, work: Path, count: int, res: int, before: int) -> dict:
    """`before` class images as they were drawn (one eager pipeline call each), then `count` by
    `ensure_class_images` through the Generator."""
    old_s, old = timed(lambda: [
        base.pipe(prompt=["a photo of cat"], generator=[torch.Generator("cpu").manual_seed(index)],
                  num_inference_steps=25, guidance_scale=5.0, height=res, width=res).images[0]
        for index in range(before)
    ])
    new_s, paths = draw_class_images(generator, work / "data", count, res)
    new = [Image.open(path).convert("RGB") for path in paths[:before]]
    return {"diffusers_count": before, "diffusers_s_each": old_s / before, "count": count, "s": new_s,
            "s_each": new_s / count, "levels_apart": mean_levels_apart(old, new), "paths": paths}


def timed_steps(step: Callable[[], bool]) -> list[float]:
    """Seconds of each call of an idle-time compile's `step` until it says nothing is left."""
    steps = []
    while True:
        seconds, more = timed(step)
        if not more:
            return steps
        steps.append(seconds)


def bench_class_images_compiled(base: BaseModel, work: Path, count: int, res: int, uncompiled: int) -> dict:
    """Class images as a worker that has compiled its full batch's shape ahead draws them, beside
    `uncompiled` of them drawn before that compile (CUDA graphs either way)."""
    generator = Generator(base, compile=True)
    generator.ahead = CompileAhead(generator.pipe)  # only the shape class images run: the full batch
    generator.ahead.want((BATCH, res, res))
    before_s, before = draw_class_images(generator, work / "class-uncompiled", uncompiled, res)
    steps = timed_steps(generator.compile_ahead)
    after_s, after = draw_class_images(generator, work / "class-compiled", count, res)
    apart = mean_levels_apart(*([Image.open(path).convert("RGB") for path in paths[:uncompiled]] for paths in (before, after)))
    return {"uncompiled_count": uncompiled, "uncompiled_s_each": before_s / uncompiled,
            "compile_s": sum(steps), "compile_steps": len(steps), "count": count, "s": after_s,
            "s_each": after_s / count, "levels_apart": apart}


def bench_compile_ahead(base: BaseModel, res: int, mode: str) -> tuple[TrainingCompileAhead, dict]:
    """The worker's idle-time compile of the training step, one `step()` at a time: the total, and the
    longest step (what a request arriving meanwhile could wait)."""
    ahead = TrainingCompileAhead(base)
    ahead.want(TrainingParams(resolution=res, mode=mode))
    steps = timed_steps(ahead.step)
    return ahead, {"steps": len(steps), "s": sum(steps), "longest_step_s": max(steps), "ready": len(ahead.ready)}


def bench_end_to_end(
    generator: Generator, work: Path, photos: list[Path], steps: int, mode: str, res: int,
    compile_ahead: TrainingCompileAhead | None, every: int, label: str = "", parts: bool = False,
) -> dict:
    """execute_run itself, from photos to the last checkpoint, on a real SQLite database (its blocks
    compiled if `compile_ahead` is given); with `parts`, the time of each part of the run too."""
    from engine.gpu.training.service import execute_run
    from engine.usecases.training.create import create_run

    async def run() -> dict:
        db, store, data = await embedded_install(work / f"e2e-{mode}-{compile_ahead is not None}-{label}")
        pet = await pet_with(db, store, photos, res)
        params = TrainingParams(steps=steps, checkpoint_every=every, validate_every=every, mode=mode, resolution=res,
                                compile=compile_ahead is not None)
        run_id = await create_run(db, store, pet, params)
        marks: list[tuple[str, float]] = []
        from engine.usecases.training.hooks import TrainingHooks

        losses: list[float] = []
        hooks = TrainingHooks(
            on_progress=lambda info: losses.append(info.loss),
            on_checkpoint=lambda step, _id: marks.append((f"checkpoint {step}", time.perf_counter())),
            on_validation=lambda step, _rows: marks.append((f"validation {step}", time.perf_counter())),
        )
        reset_peak(empty_cache=True)
        seconds: dict[str, list[float]] = {}
        start = time.perf_counter()
        with timeline(seconds) if parts else nullcontext():
            outcome = await execute_run(db, store, data, generator, run_id, hooks, compile_ahead=compile_ahead)
        wall = time.perf_counter() - start
        pictures = []  # (step, mean, std, brightest value) of each validation picture: a black one has std 0
        for image in await runs.list_validation_images(db, run_id):
            with Image.open(await store.local_path(image.path)) as opened:
                pixels = np.asarray(opened.convert("RGB"), dtype=np.float32)
            pictures.append((image.step, float(pixels.mean()), float(pixels.std()), float(pixels.max())))
        await db.close()
        return {"mode": mode + ("+compiled ahead" if compile_ahead else "") + (f" ({label})" if label else ""),
                "steps": steps, "status": outcome.status, "error": outcome.error, "wall_s": wall, "peak_gib": peak_gib(),
                "marks": [(label, t - start) for label, t in marks],
                "parts": {label: {"count": len(times), "s": sum(times), "longest_s": max(times)}
                          for label, times in seconds.items()},
                "losses_reported": len(losses), "losses_not_finite": sum(not np.isfinite(loss) for loss in losses),
                "last_loss": losses[-1] if losses else None,
                "black_pictures": sum(std < 1.0 for _, _, std, _ in pictures), "pictures": pictures}

    return asyncio.run(run())


@dataclass
class Session:
    """What the phases share: the model, the 15 photos and their cache, and the results so far."""

    args: argparse.Namespace
    results: harness.Results
    work: Path
    base: BaseModel
    photos: list[Path]
    cache: object
    generator: Generator = field(init=False)  # made by phase_painter
    # Validation pictures by batch, painted uncompiled: the compiled run's are compared with them.
    eager_pictures: dict[int, list[Image.Image]] = field(default_factory=dict)

    def record(self, key: str, value: object, label: str | None = None) -> None:
        self.results[key] = value
        if label:
            print(f"{label}: {value}", flush=True)
        self.results.save()


def phase_setup(args: argparse.Namespace) -> Session:
    """The model (tiny on the CPU, or random SDXL on the GPU), 15 photos and their training cache."""
    res = args.resolution
    device = torch.device("cpu" if args.tiny else "cuda")
    results = harness.Results(args.out, **harness.provenance(device), resolution=res, configs=[])
    work = Path(tempfile.mkdtemp(prefix="pawtrait-bench-"))
    build_s, base = timed(lambda: base_model(args.tiny, work))
    results.update(build_s=build_s, dtype=str(base.dtype), gpu_memory_gib=Settings.from_env().gpu_memory_gib)
    photos = harness.write_photos(work / "photos", 15, res)
    reset_peak(empty_cache=True)
    cache_s, cache = timed(lambda: build_cache(base, photos, PROMPT, res, flip=False, validation_prompts=VALIDATION))
    results["cache"] = {"photos": 15, "s": cache_s, "peak_gib": peak_gib()}
    print(f"built in {build_s:.1f} s; cached 15 photos in {cache_s:.2f} s", flush=True)
    results.save()
    return Session(args, results, work, base, photos, cache)


def phase_painter(session: Session) -> None:
    """The worker's painter, as `Generator.from_settings` makes it (compile ahead is the worker's idle work:
    none here, so its blocks run eagerly, replayed from CUDA graphs). Made after the configurations:
    its memory mode is chosen from the memory free then."""
    session.generator = Generator(session.base)


def phase_configs(session: Session, names: str, cache: object = None, prior: bool = False) -> None:
    """Each named configuration's steps (with prior preservation on `cache` if `prior`); one that
    fails records its error and the rest go on."""
    for name in [c for c in names.split(",") if c]:
        try:
            row = bench_config(session.base, cache or session.cache, name, session.args.steps, prior=prior,
                               res=session.args.resolution)
        except Exception as error:  # noqa: BLE001 - record and go on
            traceback.print_exc()
            row = {"config": name + ("+prior" if prior else ""), "error": harness.failure(error)}
            reset_peak(empty_cache=True)
        print(row, flush=True)
        session.results["configs"].append(row)
        session.results.save()


def phase_graph_check(session: Session) -> None:
    session.record("graph_check", check_graphs(session.base, session.cache, session.args.resolution), "graph check")


def phase_validation(session: Session) -> None:
    rows, session.eager_pictures = bench_validation(session.base, session.generator, session.cache,
                                                    session.args.resolution, session.args.validation_steps)
    session.record("validation", rows)


def phase_kept_graph_check(session: Session) -> None:
    session.record("kept_round_graph", check_kept_round_graph(session.base, session.generator, session.cache,
                                                              session.args.resolution), "kept round graph")


def phase_class_images_compiled(session: Session) -> None:
    args = session.args
    session.record("class_images_compiled", bench_class_images_compiled(
        session.base, session.work, args.class_images_compiled, args.resolution, args.class_images_before),
        "class images compiled")


def phase_checkpoint(session: Session) -> None:
    """Writing one checkpoint (the LoRA after a step, in both formats, with its resume state)."""
    trainer = LoraTrainer(session.base, TrainingParams(resolution=session.args.resolution), session.cache,
                          LoopPlan("fast", False, 4, False, "benchmark"))
    trainer.train_step(0)
    lora = trainer.lora_state_dict()
    seconds, _ = timed(lambda: write_checkpoint(session.work / "ckpt", lora, trainer.lora_config.to_dict(), rank=4,
                                                alpha=4.0, kohya_name="bench", state=trainer.state_dict(1, lora)))
    trainer.close()
    session.record("checkpoint_s", seconds)


def phase_prior(session: Session) -> None:
    """Class images drawn (as before and by the Generator), then the prior-preservation configurations."""
    args, res = session.args, session.args.resolution
    drawn = bench_class_images(session.base, session.generator, session.work, args.class_images, res,
                               args.class_images_before)
    class_paths = drawn.pop("paths")
    session.record("class_images", drawn, "class images")
    prior_cache = build_cache(session.base, session.photos, PROMPT, res, flip=False, class_paths=class_paths,
                              class_prompt="a photo of cat")
    phase_configs(session, args.prior_configs, prior_cache, prior=True)


def end_to_end_mode(session: Session, mode: str, compiled: bool) -> None:
    """One mode's end-to-end run; `compiled`: its step compiled ahead first (and the validation rounds of a
    compiled run measured), then the run, and with --full-previous the run with validation as before."""
    args, res, generator = session.args, session.args.resolution, session.generator
    every = min(args.full_every, args.full_steps)
    ahead = None
    if compiled:
        ahead, session.results["training_compile_ahead"] = bench_compile_ahead(session.base, res, mode)
        print("compiled ahead:", session.results["training_compile_ahead"], flush=True)
        if mode != "lean" and session.eager_pictures:
            rows, pictures = bench_validation(session.base, generator, session.cache, res, args.validation_steps, ahead)
            rows["compiled_vs_uncompiled_levels"] = mean_levels_apart(session.eager_pictures[3], pictures[3])
            session.record("validation_compiled", rows)
    if compiled or not args.full_compile_only:
        row = bench_end_to_end(generator, session.work, session.photos, args.full_steps, mode, res, ahead, every,
                               parts=args.full_parts)
        print(row, flush=True)
        session.results["end_to_end"].append(row)
    if compiled and args.full_previous:
        with previous_validation():
            ahead, session.results["training_compile_ahead_previous"] = bench_compile_ahead(session.base, res, mode)
            row = bench_end_to_end(generator, session.work, session.photos, args.full_steps, mode, res, ahead, every,
                                   label="previous validation")
        print(row, flush=True)
        session.results["end_to_end"].append(row)


def phase_end_to_end(session: Session) -> None:
    """execute_run in each --full-modes mode, uncompiled and (with --full-compile) compiled; a mode that
    fails records its error and the rest go on."""
    session.results["end_to_end"] = []
    for mode in session.args.full_modes.split(","):
        for compiled in (False, True) if session.args.full_compile else (False,):
            try:
                end_to_end_mode(session, mode, compiled)
            except Exception as error:  # noqa: BLE001
                traceback.print_exc()
                session.results["end_to_end"].append({"mode": mode, "error": harness.failure(error)})
            session.results.save()


def print_table(results: harness.Results) -> None:
    print(f"\n{results['card']}, torch {results['torch']}")
    print(harness.columns(("config", "<22"), ("ckpt", ">5"), ("mb", ">4"), ("s/step", ">9"), ("ms/img", ">9"),
                          ("peak GiB", ">10")))
    for row in results["configs"]:
        if "error" in row:
            print(f"{row['config']:<22} {row['error'][:60]}")
        else:
            print(harness.columns((row["config"], "<22"), ("on" if row["checkpointing"] else "off", ">5"),
                                  (row["micro_batch"], ">4"), (row["s_per_step"], ">9.3f"), (row["ms_per_image"], ">9.1f"),
                                  (row["peak_gib"], ">10.2f")))


def main() -> int:
    parser = harness.parser(__doc__, out="train_results.json")
    parser.add_argument("--configs", default="lean2,lean4,fast4")
    parser.add_argument("--prior-configs", default="lean4")
    parser.add_argument("--late-configs", default="", help="run after everything else (compiled ones: slow to start)")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per configuration")
    parser.add_argument("--class-images", type=int, default=8, help="class images generated for prior preservation")
    parser.add_argument("--class-images-before", type=int, default=4, help="of them, drawn the previous way too")
    parser.add_argument("--full-steps", type=int, default=60, help="steps of the end-to-end execute_run (0 = skip)")
    parser.add_argument("--full-modes", default="fast")
    parser.add_argument("--full-every", type=int, default=100, help="checkpoint and validation interval of that run")
    parser.add_argument("--graph-check", action="store_true", help="compare eager and CUDA-graph training steps")
    parser.add_argument("--full-compile", action="store_true",
                        help="then the step compiled ahead as a worker does when idle, and the run again, compiled")
    parser.add_argument("--full-compile-only", action="store_true", help="with --full-compile, skip the uncompiled run")
    parser.add_argument("--full-previous", action="store_true",
                        help="with --full-compile, then the compiled run again with validation as up to aee50af (LoRA live)")
    parser.add_argument("--full-parts", action="store_true", help="time each part of the end-to-end runs too")
    parser.add_argument("--kept-graph-check", action="store_true",
                        help="a round replayed from the previous round's kept graph against a fresh one")
    parser.add_argument("--validation-steps", type=int, default=50,
                        help="training steps before the validation rounds are measured (so the LoRA has moved); -1: no rounds")
    parser.add_argument("--class-images-compiled", type=int, default=0,
                        help="this many class images drawn after compiling their shape ahead (beside --class-images-before uncompiled)")
    harness.add_resolution(parser)
    harness.add_tiny_model(parser)
    args = parser.parse_args()

    session = phase_setup(args)
    if args.graph_check:
        phase_graph_check(session)
    phase_configs(session, args.configs)
    phase_painter(session)
    if args.validation_steps >= 0:
        phase_validation(session)
    if args.kept_graph_check:
        phase_kept_graph_check(session)
    if args.class_images_compiled:
        phase_class_images_compiled(session)
    phase_checkpoint(session)
    if args.prior_configs:
        phase_prior(session)
    if args.full_steps:
        phase_end_to_end(session)
    phase_configs(session, args.late_configs)
    print_table(session.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
