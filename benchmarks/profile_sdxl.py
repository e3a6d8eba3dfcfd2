"""Where the GPU time of a compiled fast-mode training step and of a validation round's UNet call goes.

Full-size random SDXL-base-1.0 on the GPU (sdxl_random.py), the product's own trainer with its
blocks compiled (as a worker compiles them ahead) and its step replayed from a CUDA graph.
Prints and saves, for each: the wall time per call, the GPU time by kernel family, the
top kernels, and the FLOPs the call does against the time it takes.

    python benchmarks/profile_sdxl.py --out profile.json [--steps 10]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness
from sdxl_random import random_base
from train_sdxl import PROMPT, VALIDATION

from engine.gpu.compile import compiled_blocks
from engine.gpu.cuda_graphs import CapturedCall, on_side_stream
from engine.gpu.training.cache import build_cache
from engine.gpu.training.loop import LoopPlan, LoraTrainer
from engine.usecases.training.params import TrainingParams

# Kernel families, matched in this order on lower-cased kernel names.
FAMILIES = (
    ("attention", ("flash", "fmha", "sdpa", "attention")),
    ("convolution", ("conv", "fprop", "dgrad", "wgrad", "implicit_gemm")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "matmul")),
    ("optimizer", ("optimizer", "adam", "multi_tensor", "foreach")),
    ("triton reduction", ("triton_red", "triton_per")),
    ("triton pointwise", ("triton_poi", "triton_")),
    ("normalisation (eager)", ("norm",)),
    ("copy", ("copy", "memcpy", "cat", "memset")),
)


def family(name: str) -> str:
    lower = name.lower()
    return next((label for label, keys in FAMILIES if any(key in lower for key in keys)), "other")


def kernel_profile(run: Callable[[], object], calls: int) -> dict:
    """GPU time per call by family and the 25 costliest kernels, from `calls` calls of `run`."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            run()
        torch.cuda.synchronize()
    by_family: dict[str, float] = {}
    kernels = []
    unaligned = 0.0  # matrix products on operands aligned to fewer than 16 bytes (cutlass "align1/2")
    for event in prof.key_averages():
        us = getattr(event, "self_device_time_total", 0) or 0
        if us <= 0:
            continue
        ms = us / 1000 / calls
        by_family[family(event.key)] = by_family.get(family(event.key), 0.0) + ms
        kernels.append((ms, event.count // calls, family(event.key), event.key[:110]))
        unaligned += ms if "align1" in event.key or "align2" in event.key else 0.0
    kernels.sort(reverse=True)
    return {"gpu_ms": sum(by_family.values()), "by_family_ms": dict(sorted(by_family.items(), key=lambda kv: -kv[1])),
            "kernels_per_call": sum(count for _, count, _, _ in kernels), "unaligned_gemm_ms": unaligned,
            "top": kernels[:25]}


def wall_ms(run: Callable[[], object], calls: int) -> float:
    return 1000 * harness.per_call_s(run, calls)


def flops(run: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def round_unet_call(base, batch: int) -> tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]:
    """A UNet call as a validation round makes it (`batch` = its pictures, twice with guidance) and
    seeded random inputs for it."""
    unet = base.pipe.unet
    device, dtype = base.device, base.dtype
    generator = torch.Generator(device).manual_seed(0)
    inputs = (
        torch.randn(batch, 4, 128, 128, device=device, dtype=dtype, generator=generator),
        torch.tensor(500.0, device=device),
        torch.randn(batch, 77, 2048, device=device, dtype=dtype, generator=generator),
        torch.randn(batch, 1280, device=device, dtype=dtype, generator=generator),
        torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * batch, device=device, dtype=dtype),
    )

    def call(sample, t, hidden, text, time_ids):
        return unet(sample, t, hidden, added_cond_kwargs={"text_embeds": text, "time_ids": time_ids}, return_dict=False)[0]

    return call, inputs


def kernels_of_a_step(trainer: LoraTrainer, step: int) -> dict:
    """`kernel_profile` of one step launched kernel by kernel (the trainer's graph dropped for good),
    after one such step to settle."""
    trainer.release_graph()
    trainer.graphed = False
    trainer.train_step(step)
    return kernel_profile(lambda: trainer.train_step(step + 1), 1)


def profile_training(base, cache, steps: int) -> dict:
    """fast4 compiled + CUDA graph: the step, the replay alone, and the kernels of one step."""
    params = TrainingParams(resolution=1024, compile=True)
    plan = LoopPlan("fast", False, 4, False, "profile")
    trainer = LoraTrainer(base, params, cache, plan, compiled_blocks(base.pipe.unet))
    step = iter(range(10_000))
    try:
        started = time.perf_counter()
        for _ in range(3):  # two eager steps (they compile), then the capture
            trainer.train_step(next(step))
        torch.cuda.synchronize()
        row: dict = {"warmup_s": time.perf_counter() - started}
        row["step_ms"] = wall_ms(lambda: trainer.train_step(next(step)), steps)
        captured = trainer._captured
        assert captured is not None, "the step was not captured"
        row["replay_ms"] = wall_ms(captured.graph.replay, steps)
        row["graphed"] = kernel_profile(lambda: trainer.train_step(next(step)), 2)
        # The same step's kernels launched one by one (if the profiler lists a graph's kernels as one).
        row["eager_launch"] = kernels_of_a_step(trainer, next(step))
        next(step)
        n = next(step)
        trainer.compiled = None  # counted on eager blocks: the counter would make dynamo compile again
        row["tflop_per_step"] = flops(lambda: trainer.train_step(n)) / 1e12
        row["tflops_achieved"] = row["tflop_per_step"] / (row["step_ms"] / 1000)
    finally:
        trainer.close()
    return row


def profile_round_unet(base, batch: int, calls: int) -> dict:
    """One UNet call of a validation round (3 pictures with guidance: batch 6) with compiled blocks,
    replayed from a CUDA graph, against the same call with eager blocks."""
    call, inputs = round_unet_call(base, batch)
    blocks = compiled_blocks(base.pipe.unet)
    row: dict = {"batch": batch}
    with torch.no_grad():
        row["tflop_per_call"] = flops(lambda: call(*inputs)) / 1e12
        for label, active in (("eager blocks", None), ("compiled blocks", blocks)):
            started = time.perf_counter()
            with active.active() if active is not None else nullcontext():
                on_side_stream(call, *inputs)  # the warm-up (and, compiled, the compiling) before a capture
                torch.cuda.synchronize()
                first_s = time.perf_counter() - started
                graph = CapturedCall(call, inputs)
                per_call = wall_ms(graph.graph.replay, calls)
                row[label] = {"first_call_s": first_s, "ms_per_call": per_call, "ms_per_image_pass": per_call / batch,
                              "tflops_achieved": row["tflop_per_call"] / (per_call / 1000),
                              "kernels": kernel_profile(lambda: call(*inputs), 1)}
            del graph
            torch.cuda.empty_cache()
    return row


# cuDNN's attention kernels before PyTorch's own (FlashAttention-2), whatever the dispatch would pick.
CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attention_backends(base, cache, steps: int) -> dict:
    """The uncompiled, graphed training step and a round's UNet call (batch 6, graphed) with PyTorch's
    default attention kernels and with cuDNN's first, side by side: times, attention's GPU time, and
    how far the results move."""
    rows: dict = {}
    call, inputs = round_unet_call(base, 6)
    outputs = {}
    for label, order in (("default", None), ("cudnn first", CUDNN_FIRST)):
        with sdpa_kernel(order, set_priority=True) if order else nullcontext():
            trainer = LoraTrainer(base, TrainingParams(resolution=1024), cache, LoopPlan("fast", False, 4, False, "profile"))
            try:
                for step in range(3):
                    trainer.train_step(step)
                losses = []
                row = {"training_step_ms": wall_ms(lambda: losses.append(trainer.train_step(3 + len(losses))), steps)}
                row["losses"] = [float(loss) for loss in losses]
                step_profile = kernels_of_a_step(trainer, 3 + steps)
                row["training_by_family_ms"] = step_profile["by_family_ms"]
                row["training_attention_kernels"] = [k for k in step_profile["top"] if k[2] == "attention"][:6]
            finally:
                trainer.close()
            with torch.no_grad():
                on_side_stream(call, *inputs)
                graph = CapturedCall(call, inputs)
                row["round_unet_ms"] = wall_ms(graph.graph.replay, steps)
                outputs[label] = graph.output.float().clone()
                unet_profile = kernel_profile(lambda: call(*inputs), 1)
                row["round_unet_by_family_ms"] = unet_profile["by_family_ms"]
                row["round_unet_attention_kernels"] = [k for k in unet_profile["top"] if k[2] == "attention"][:6]
                del graph
                torch.cuda.empty_cache()
        rows[label] = row
        print(label, json.dumps(row)[:1500], flush=True)
    a, b = outputs["default"], outputs["cudnn first"]
    rows["round_unet_relative_difference"] = float((a - b).norm() / a.norm())
    return rows


def lora_ranks(base, cache, steps: int, ranks: tuple[int, ...], compiled: bool) -> dict:
    """The uncompiled, graphed fast-mode step at several LoRA ranks: rank 4's factors make matrix
    products with a dimension of 4 (8 bytes in bf16), which cuBLAS runs with Ampere-era kernels for
    unaligned operands; a rank of 8 or more aligns them to 16 bytes."""
    rows: dict = {}
    for rank in ranks:
        trainer = LoraTrainer(base, TrainingParams(resolution=1024, rank=rank, compile=compiled), cache,
                              LoopPlan("fast", False, 4, False, "profile"),
                              compiled_blocks(base.pipe.unet) if compiled else None)
        try:
            for step in range(3):
                trainer.train_step(step)
            row = {"step_ms": wall_ms(lambda: trainer.train_step(5), steps)}
            kernels = kernels_of_a_step(trainer, 6)
            row["by_family_ms"] = kernels["by_family_ms"]
            row["unaligned_gemm_ms"] = kernels["unaligned_gemm_ms"]
            row["top"] = kernels["top"][:12]
        finally:
            trainer.close()
        rows[f"rank {rank}{' compiled' if compiled else ''}"] = row
        print(rank, json.dumps(row)[:1200], flush=True)
    return rows


def aligned_rank(base, cache, steps: int) -> dict:
    """The product's rank-4 step trained 8 wide (loop.ALIGNED_RANK) against trained 4 wide as before,
    graphed, uncompiled, in fast and lean mode; and whether the widening stayed zero."""
    import engine.gpu.training.loop as loop

    rows: dict = {}
    for mode, checkpointing, offload in (("fast", False, False), ("lean", True, True)):
        for aligned in (1, loop.ALIGNED_RANK):
            saved, loop.ALIGNED_RANK = loop.ALIGNED_RANK, aligned
            try:
                trainer = LoraTrainer(base, TrainingParams(resolution=1024), cache,
                                      LoopPlan(mode, checkpointing, 4, offload, "profile"))
            finally:
                loop.ALIGNED_RANK = saved
            try:
                for step in range(3):
                    trainer.train_step(step)
                losses: list[torch.Tensor] = []
                row = {"trained_rank": trainer.trained_rank,
                       "step_ms": wall_ms(lambda: losses.append(trainer.train_step(3 + len(losses))), steps)}
                row["last_loss"] = float(losses[-1])
                rank = trainer.params.rank
                widenings = [p[rank:] if "lora_A" in name else p[:, rank:]
                             for name, p in trainer.unet.named_parameters() if "lora_" in name]
                row["widening_max_abs"] = max((float(w.abs().max()) for w in widenings if w.numel()), default=0.0)
            finally:
                trainer.close()
            rows[f"{mode} trained {trainer.trained_rank} wide"] = row
            print(mode, json.dumps(row), flush=True)
    return rows


def optimizer_layouts(base, cache, steps: int) -> dict:
    """The step's clipping and 8-bit AdamW update over the LoRA's 1,120 tensors one by one (as the
    trainer runs them) against the same over one flat tensor: wall and host time per update."""
    from engine.gpu.training.optimizer import build_optimizer

    params = TrainingParams(resolution=1024)
    trainer = LoraTrainer(base, params, cache, LoopPlan("fast", False, 4, False, "profile"))
    try:
        for step in range(4):  # the last ones replayed: the gradients sit in the graph's tensors
            trainer.train_step(step)
        flat = torch.nn.Parameter(torch.cat([p.detach().flatten() for p in trainer.lora_params]))
        flat.grad = torch.cat([p.grad.flatten() for p in trainer.lora_params])
        layouts = {"per tensor": (trainer.lora_params, trainer.optimizer),
                   "flat": ([flat], build_optimizer(params, [flat], base.device))}
        rows: dict = {"tensors": len(trainer.lora_params), "elements": flat.numel()}
        for name, (tensors, optimizer) in layouts.items():
            def update() -> None:
                torch.nn.utils.clip_grad_norm_(tensors, params.max_grad_norm)
                optimizer.step()
            update()
            torch.cuda.synchronize()
            host = time.perf_counter()
            for _ in range(steps):
                update()
            host = (time.perf_counter() - host) / steps
            rows[name] = {"ms": wall_ms(update, steps), "host_ms": host * 1000}
            print(name, rows[name], flush=True)
        return rows
    finally:
        trainer.close()


# --parts: the result's key and what measures it, from the model, the photos' cache and --steps.
PARTS: dict[str, tuple[str, Callable[..., dict]]] = {
    "training": ("training", profile_training),
    "round": ("round_unet", lambda base, _cache, steps: profile_round_unet(base, 6, steps)),
    "aligned": ("aligned_rank", aligned_rank),
    "ranks": ("lora_ranks", lambda base, cache, steps: lora_ranks(base, cache, steps, (4, 8, 16), compiled=False)),
    "ranks-compiled": ("lora_ranks_compiled", lambda base, cache, steps: lora_ranks(base, cache, steps, (4, 8), compiled=True)),
    "optimizer": ("optimizer_layouts", optimizer_layouts),
    "attention": ("attention_backends", attention_backends),
}


def main() -> int:
    parser = harness.parser(__doc__, out="profile.json")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--parts", default="attention,training,round", help=f"comma-separated, of {', '.join(PARTS)}")
    args = parser.parse_args()
    parts = harness.selected(args.parts, PARTS)
    work = Path(tempfile.mkdtemp(prefix="pawtrait-profile-"))
    base = random_base(work / "tokenizer")
    photos = harness.write_photos(work / "photos", 15, 1024)
    cache = build_cache(base, photos, PROMPT, 1024, flip=False, validation_prompts=VALIDATION)
    results = harness.Results(args.out, **harness.provenance(base.device))
    for _name, (key, measure) in parts:
        results[key] = measure(base, cache, args.steps)
        print(json.dumps(results, indent=1), flush=True)
        results.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
