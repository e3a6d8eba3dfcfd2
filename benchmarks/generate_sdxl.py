"""Generation speed and memory on a GPU: full-size SDXL (random weights) through `Generator`.

No weights can be downloaded where this runs, so it builds the exact SDXL-base-1.0
architecture with random weights directly on the GPU in bf16 (speed and memory do not
depend on weight values) and drives the product's own `engine.gpu.generation.Generator`:
1024², 30 steps, guidance 5. It measures batch 1 and 4, peak memory, pet LoRA loading and
switching, the levers (CUDA graphs over the UNet calls vs eager, the guidance interval vs
guiding every step, channels-last, cudnn.benchmark, cuDNN attention, fused QKV, fp32 vs bf16
VAE decode, a compiled VAE decoder, regional torch.compile, FP8 linear layers through
torchao, low-memory mode), where a request's time goes, a per-kernel-family profile of one
UNet call, and a cold start from disk.

    python benchmarks/generate_sdxl.py --out results.json [--phases default,loras,...]

Prints a table last; each phase that fails records its error and the rest go on.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from peft import LoraConfig, get_peft_model_state_dict
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdxl_random import build_sdxl

from engine.gpu.compile import compiled_blocks
from engine.gpu.generation.generator import Generator, PetLora
from engine.gpu.generation.guidance import GuidanceInterval
from engine.gpu.generation.recipe import Recipe
from engine.gpu.models import BaseModel
from engine.usecases.generation.request import GenerationRequest
from storage.pets import Pet

GIB = 2**30
PET = Pet(id=1, guild_id="local", owner_id="bench", name="Thor", token="zqxjv", class_noun="cat",
          active_checkpoint_id=None, created_at="")


def make_lora(unet: UNet2DConditionModel, seed: int, folder: Path) -> Path:
    """A rank-4 pet LoRA (small random weights) saved as training saves one."""
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights="gaussian")
    unet.add_adapter(config, adapter_name="bench-make")
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name and "bench-make" in name:
                param.normal_(0, 1e-2)
    StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet, adapter_name="bench-make"))
    unet.delete_adapters("bench-make")
    return folder / "pytorch_lora_weights.safetensors"


def sync_time(fn: Callable[[], object]) -> tuple[float, object]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, result


def request(count: int = 1, seed: int = 0, **extra) -> GenerationRequest:
    return GenerationRequest(prompt="a photo of TOK cat on a sofa, golden hour", negative_prompt="blurry",
                             steps=30, guidance=5.0, size="1:1", count=count, seed=seed, **extra)


def per_image(gen: Generator, count: int, runs: int, **kwargs) -> tuple[float, float]:
    """Median seconds per image over `runs` and the peak GiB allocated, after one warm-up.

    The pet is always named (its token is in the prompt); without `lora` that is the plain base.
    """
    kwargs.setdefault("pet", PET)
    gen.generate(request(count), **kwargs)
    torch.cuda.reset_peak_memory_stats()
    times = [sync_time(lambda: gen.generate(request(count, seed=run), **kwargs))[0] for run in range(runs)]
    return statistics.median(times) / count, torch.cuda.max_memory_allocated() / GIB


def compile_everything_wanted(gen: Generator) -> tuple[float, list[float]]:
    """Run the worker's idle-time compiling to its end: (total seconds, seconds of each step)."""
    steps = []
    started = time.perf_counter()
    while True:
        seconds, more = sync_time(gen.compile_ahead)
        if not more:
            return time.perf_counter() - started, steps
        steps.append(seconds)


def mean_pixel_diff(x: Image.Image, y: Image.Image) -> float:
    """Mean absolute difference of two pictures in 0-255 levels (0 = the same pixels)."""
    return float(np.abs(np.asarray(x, dtype=np.int16) - np.asarray(y, dtype=np.int16)).mean())


def unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class Bench:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.results: dict[str, object] = {}
        self.rows: list[tuple[str, str, str, str, str]] = []

    def phase(self, name: str, fn: Callable[[], None]) -> None:
        print(f"--- {name}", flush=True)
        started = time.perf_counter()
        try:
            fn()
        except Exception as error:  # noqa: BLE001 - a failed lever is a result too; the others still run
            traceback.print_exc()
            self.results[f"{name}.error"] = f"{type(error).__name__}: {error}"
            self.rows.append((name, "failed", "", "", f"{type(error).__name__}: {str(error)[:80]}"))
        self.results[f"{name}.phase_s"] = round(time.perf_counter() - started, 1)
        self.out.write_text(json.dumps(self.results, indent=2))

    def row(self, lever: str, b1: float | None = None, b4: float | None = None, peak: float | None = None, note: str = "") -> None:
        fmt = lambda value, unit: "" if value is None else f"{value:.3f} {unit}" if unit == "s" else f"{value:.1f} {unit}"  # noqa: E731
        self.rows.append((lever, fmt(b1, "s"), fmt(b4, "s"), fmt(peak, "GiB"), note))
        self.results[lever] = {"s_per_image_b1": b1, "s_per_image_b4": b4, "peak_gib": peak, "note": note}
        print(f"{lever}: b1={b1} b4={b4} peak={peak} {note}", flush=True)

    def table(self) -> str:
        lines = ["| configuration | s/image, batch 1 | s/image, batch 4 | peak GPU memory | note |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {' | '.join(row)} |" for row in self.rows]
        return "\n".join(lines)


def cold_start(model_dir: str, compile: bool = False) -> None:
    """In a fresh process: load the saved model from disk as the worker does, then one request."""
    started = time.perf_counter()
    from config.settings import Settings
    from engine.gpu.models import load_base_model

    base = load_base_model(Settings(model=model_dir, vae=None, device="cuda"))
    loaded = time.perf_counter()
    gen = Generator(base, memory="full", cuda_graphs=True, compile=compile)
    gen.generate(request(), pet=PET)
    torch.cuda.synchronize()
    done = time.perf_counter()
    numbers = {"load_s": loaded - started, "first_request_s": done - loaded, "total_s": done - started}
    if compile:  # what the worker then does while idle, its first compiled picture, and then steady state
        numbers["compile_ahead_s"], steps = compile_everything_wanted(gen)
        numbers["compile_steps"] = len(steps)
        numbers["longest_compile_step_s"] = max(steps, default=0.0)
        graphs = unique_graphs()
        numbers["first_compiled_request_s"] = sync_time(lambda: gen.generate(request(), pet=PET))[0]
        numbers["compiled_from_start_s"] = time.perf_counter() - started
        numbers["compiled_b1_s"], numbers["peak_gib"] = per_image(gen, 1, 5)
        numbers["compiled_b4_s"], _ = per_image(gen, 4, 3)
        numbers["graphs_compiled_by_requests"] = unique_graphs() - graphs
    print(json.dumps(numbers))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("generate_sdxl.json"))
    parser.add_argument("--phases", default="default,loras,graphs,graph_levers,profile,vae,low_memory,cold,compile_ahead",
                        help="comma-separated phases to run, in this order (default: all)")
    parser.add_argument("--cold", metavar="MODEL_DIR", help=argparse.SUPPRESS)  # the cold-start child process
    parser.add_argument("--cold-compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold:
        cold_start(args.cold, compile=args.cold_compile)
        return 0

    device = torch.device("cuda")
    bench = Bench(args.out)
    work = Path(tempfile.mkdtemp(prefix="gen-bench-"))
    bench.results["card"] = torch.cuda.get_device_name(device)
    bench.results["torch"] = torch.__version__
    started = time.perf_counter()
    pipe = build_sdxl(device, torch.bfloat16, work / "tokenizer")
    torch.cuda.synchronize()
    bench.results["build_s"] = round(time.perf_counter() - started, 1)
    base = BaseModel(pipe=pipe, device=device, dtype=torch.bfloat16, model_id="sdxl-base-1.0-random", vae_id=None)
    state: dict[str, object] = {}

    def default_mode() -> None:
        first_s, gen = sync_time(lambda: Generator(base, memory="full", cuda_graphs=False))
        first_request_s, _ = sync_time(lambda: gen.generate(request(), pet=PET))
        bench.results["first_request_in_process_s"] = round(first_s + first_request_s, 2)
        state["gen"] = gen
        b1, peak1 = per_image(gen, 1, 3)
        b4, peak4 = per_image(gen, 4, 1)
        bench.row("eager (no CUDA graphs), plain base: bf16, SDPA, DPM++ 2M Karras, bf16 VAE decode", b1, b4, peak1,
                  f"batch 4 peak {peak4:.1f} GiB; first request in a fresh process after build {first_s + first_request_s:.1f} s")

    def loras() -> None:
        gen: Generator = state.get("gen") or Generator(base, memory="full", cuda_graphs=False)  # type: ignore[assignment]
        state["gen"] = gen
        files = [make_lora(pipe.unet, seed, work / f"lora-{seed}") for seed in (1, 2)]
        state["loras"] = [PetLora(str(file), file) for file in files]
        a, b = state["loras"]

        def apply(lora: PetLora) -> None:
            with gen.loras.applied(lora.key, lora.path, 1.0):
                pass

        load_a, _ = sync_time(lambda: apply(a))
        load_b, _ = sync_time(lambda: apply(b))
        switches = [sync_time(lambda lora=lora: apply(lora))[0] for lora in (a, b, a, b, a)]
        b1, peak = per_image(gen, 1, 3, lora=a)
        b4, _ = per_image(gen, 4, 1, lora=a)
        base_after, _ = per_image(gen, 1, 2)
        bench.results["base_after_pets_s"] = base_after
        bench.results["lora_first_load_s"] = [round(load_a, 3), round(load_b, 3)]
        bench.results["lora_switch_s"] = [round(s, 4) for s in switches]
        bench.row("eager + pet LoRA (rank 4, merged into the weights per request)", b1, b4, peak,
                  f"first use (read from disk) {load_a:.2f}/{load_b:.2f} s; switch to a cached pet "
                  f"(merge + restore) {statistics.median(switches) * 1000:.0f} ms; plain base after pets {base_after:.3f} s")

    def vae_precision() -> None:
        vae = pipe.vae
        latents = torch.randn(1, 4, 128, 128, device=device, dtype=torch.bfloat16)
        with torch.no_grad():
            vae.decode(latents / 0.13025)
            bf16_s = statistics.median(sync_time(lambda: vae.decode(latents / 0.13025))[0] for _ in range(3))
            vae.to(torch.float32)
            vae.decode(latents.float() / 0.13025)
            torch.cuda.reset_peak_memory_stats()
            fp32_s = statistics.median(sync_time(lambda: vae.decode(latents.float() / 0.13025))[0] for _ in range(3))
            fp32_peak = torch.cuda.max_memory_allocated() / GIB
            vae.to(torch.bfloat16)
        bench.results["vae_decode_s"] = {"bf16": bf16_s, "fp32": fp32_s, "fp32_peak_gib": fp32_peak}
        bench.rows.append(("VAE decode of one 1024² image: bf16 vs fp32 (SDXL config's upcast)",
                           f"{bf16_s:.3f} s vs {fp32_s:.3f} s", "", "", "the product decodes in bf16, fp32 only after a NaN"))

    def channels_last() -> None:
        gen: Generator = state["gen"]  # type: ignore[assignment]
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        b1, peak = per_image(gen, 1, 3)
        bench.row("+ channels-last UNet and VAE", b1, None, peak)

    def fused_qkv() -> None:
        gen: Generator = state["gen"]  # type: ignore[assignment]
        a, _b = state["loras"]  # type: ignore[misc]
        img_unfused_lora = gen.generate(request(), pet=PET, lora=a).images[0]
        pipe.fuse_qkv_projections()
        b1, peak = per_image(gen, 1, 3)
        img_fused_base = gen.generate(request(), pet=PET).images[0]
        img_fused_lora = gen.generate(request(), pet=PET, lora=a).images[0]
        pipe.unfuse_qkv_projections()
        img_unfused_base = gen.generate(request(), pet=PET).images[0]
        note = (f"mean |pixel diff|: pet LoRA vs base {mean_pixel_diff(img_unfused_lora, img_unfused_base):.2f} unfused; "
                f"with fused QKV the LoRA image differs from the unfused LoRA image by {mean_pixel_diff(img_fused_lora, img_unfused_lora):.2f} "
                f"(fused vs unfused base: {mean_pixel_diff(img_fused_base, img_unfused_base):.2f})")
        bench.results["fused_qkv_lora_check"] = note
        bench.row("+ fused QKV projections (base model)", b1, None, peak, note)

    def cudnn_autotune() -> None:
        gen: Generator = state["gen"]  # type: ignore[assignment]
        torch.backends.cudnn.benchmark = True
        b1, peak = per_image(gen, 1, 3)
        torch.backends.cudnn.benchmark = False
        bench.row("+ cudnn.benchmark (base model)", b1, None, peak)

    def low_memory() -> None:
        gen = Generator(base, memory="low")  # offload moves the weights: no CUDA graphs there
        a, _b = state["loras"]  # type: ignore[misc]
        b1, peak = per_image(gen, 1, 2, lora=a)
        bench.row("low-memory mode (model CPU offload + VAE tiling), with pet LoRA", b1, None, peak)
        pipe.remove_all_hooks()
        pipe.vae.disable_tiling()
        pipe.to(device)

    def graphs() -> None:
        """The product's default: the denoising loop's UNet calls replayed from CUDA graphs."""
        eager: Generator = state["gen"]  # type: ignore[assignment]
        a, b = state["loras"]  # type: ignore[misc]
        reference = eager.generate(request(seed=7), pet=PET, lora=a).images[0]
        gen = Generator(base, memory="full", cuda_graphs=True)
        first_s, first = sync_time(lambda: gen.generate(request(seed=7), pet=PET, lora=a))
        same = mean_pixel_diff(first.images[0], reference)
        b1, peak = per_image(gen, 1, 5, lora=a)
        b1_other, _ = per_image(gen, 1, 3, lora=b)
        again = gen.generate(request(seed=7), pet=PET, lora=a).images[0]
        base_b1, _ = per_image(gen, 1, 3)
        b4, peak4 = per_image(gen, 4, 2, lora=a)
        bench.results["graphs"] = {"first_request_s": first_s, "pixel_diff_vs_eager": same,
                                   "pixel_diff_after_other_pet": mean_pixel_diff(again, reference), "peak_b4_gib": peak4}
        bench.row("CUDA graphs over the UNet calls (product default), pet merged", b1, b4, peak,
                  f"first request (warm-up + capture) {first_s:.2f} s; mean |pixel diff| vs eager {same:.3f}, "
                  f"after another pet {mean_pixel_diff(again, reference):.3f}; other pet {b1_other:.3f} s; "
                  f"plain base {base_b1:.3f} s; batch 4 peak {peak4:.1f} GiB")
        state["graphs_gen"] = gen

    def compile_ahead() -> None:
        """The product default: a request shape runs eagerly (CUDA graphs) until the worker's idle
        time has compiled its blocks ahead; then it runs compiled (+ CUDA graphs)."""
        old: Generator | None = state.pop("graphs_gen", None)  # type: ignore[assignment]
        if old is not None:
            old.release_graphs()
        pipe.unload_lora_weights()
        a, b = state["loras"]  # type: ignore[misc]
        gen = Generator(base, memory="full", compile=True)
        first_s, _ = sync_time(lambda: gen.generate(request(), pet=PET, lora=a))
        eager_b1, _ = per_image(gen, 1, 3, lora=a)
        eager_b4, _ = per_image(gen, 4, 2, lora=a)
        reference = gen.generate(request(seed=7), pet=PET, lora=a).images[0]
        graphs_before = unique_graphs()
        # Idle time, with a picture requested now and then, as the worker interleaves them.
        steps: list[float] = []
        served: list[float] = []
        started = last = time.perf_counter()
        while True:
            seconds, more = sync_time(gen.compile_ahead)
            if not more:
                break
            steps.append(seconds)
            if time.perf_counter() - last > 30:
                print(f"=== serving a picture while compiling ahead ({sorted(gen.ahead.ready)} ready)", flush=True)  # type: ignore[union-attr]
                served.append(sync_time(lambda: gen.generate(request(seed=1), pet=PET, lora=a))[0])
                print(f"=== served in {served[-1]:.2f} s", flush=True)
                last = time.perf_counter()
        compile_s = time.perf_counter() - started
        print("=== compiled ahead: from here on no request should compile", flush=True)
        graphs = unique_graphs()
        first_compiled_s, image = sync_time(lambda: gen.generate(request(seed=7), pet=PET, lora=a))
        diff = mean_pixel_diff(image.images[0], reference)
        b1, peak = per_image(gen, 1, 5, lora=a)
        b1_other, _ = per_image(gen, 1, 3, lora=b)
        base_b1, _ = per_image(gen, 1, 3)
        b4, peak4 = per_image(gen, 4, 3, lora=a)
        switch_graphs = unique_graphs() - graphs
        state["graphs_gen"] = gen
        bench.results["compile_ahead"] = {
            "first_request_s": first_s, "eager_b1": eager_b1, "eager_b4": eager_b4, "compile_s": compile_s,
            "steps": len(steps), "longest_step_s": max(steps), "median_step_s": statistics.median(steps),
            "served_while_compiling_s": served, "dynamo_graphs": graphs - graphs_before,
            "first_compiled_request_s": first_compiled_s, "pixel_diff_vs_eager": diff, "peak_b4_gib": peak4,
            "new_graphs_after_compiling": switch_graphs,
        }
        bench.row("CUDA graphs, not compiled yet (what requests get while the worker compiles), pet merged", eager_b1, eager_b4, None,
                  f"first request in the process {first_s:.2f} s")
        bench.row("compiled ahead (transformer + ResNet blocks, static shapes) + CUDA graphs, pet merged, guidance interval",
                  b1, b4, peak,
                  f"compiling 1 and 4 images at 1024² took {compile_s:.0f} s in {len(steps)} steps (longest {max(steps):.1f} s, "
                  f"median {statistics.median(steps):.1f} s); pictures served meanwhile {', '.join(f'{x:.2f}' for x in served)} s; "
                  f"first compiled request {first_compiled_s:.2f} s; mean |pixel diff| vs eager {diff:.2f}; other pet {b1_other:.3f} s, "
                  f"plain base {base_b1:.3f} s, new dynamo graphs after compiling ahead {switch_graphs}; batch 4 peak {peak4:.1f} GiB")

    def vae_batch() -> None:
        """The VAE decode of a batch of 4: one image at a time (the product: batch 4 peaks no higher than
        batch 1) against all four at once, with the compiled decoder blocks."""
        gen: Generator = state["graphs_gen"]  # type: ignore[assignment]
        vae = pipe.vae
        latents = torch.randn(4, 4, 128, 128, device=device, dtype=torch.bfloat16)
        numbers = {}
        with gen.ahead.decoder_blocks.active():  # type: ignore[union-attr]
            for label, slicing in (("one at a time", True), ("all four at once", False)):
                vae.use_slicing = slicing
                first_s, _ = sync_time(lambda: gen._decode(latents))
                torch.cuda.reset_peak_memory_stats()
                seconds = statistics.median(sync_time(lambda: gen._decode(latents))[0] for _ in range(5))
                numbers[label] = {"s_per_image": seconds / 4, "first_s": first_s, "peak_gib": torch.cuda.max_memory_allocated() / GIB}
        vae.use_slicing = True
        bench.results["vae_batch"] = numbers
        bench.rows.append(("VAE decode of 4 images at 1024², compiled blocks: one at a time vs all at once (s per image)",
                           " vs ".join(f"{n['s_per_image']:.4f}" for n in numbers.values()), "", "",
                           " vs ".join(f"peak {n['peak_gib']:.1f} GiB" for n in numbers.values())))

    def graph_levers() -> None:
        """Levers on GPU time, now that CUDA graphs removed the launch overhead they used to hide behind."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        gen: Generator = state.get("graphs_gen") or Generator(base, memory="full", cuda_graphs=True)  # type: ignore[assignment]
        a, _b = state["loras"]  # type: ignore[misc]

        def measure(label: str) -> None:
            gen.release_graphs()  # new weight layouts or kernels: capture again
            b1, _ = per_image(gen, 1, 3, lora=a)
            b4, peak = per_image(gen, 4, 1, lora=a)
            bench.row(f"CUDA graphs + {label}", b1, b4, peak)

        torch.backends.cudnn.benchmark = True
        measure("cudnn.benchmark")
        pipe.unet.to(memory_format=torch.channels_last)
        measure("channels-last UNet + cudnn.benchmark")
        torch.backends.cudnn.benchmark = False
        measure("channels-last UNet")
        pipe.unet.to(memory_format=torch.contiguous_format)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            measure("cuDNN attention (SDPA backend)")
        gen.release_graphs()

    def profile_unet() -> None:
        """Where one UNet call's GPU time goes, by kernel family, at batch 2 (one image with CFG) and 8."""
        from torch.profiler import ProfilerActivity, profile

        families = {"attention": ("flash", "fmha", "attention"), "conv": ("conv", "implicit_gemm", "cudnn", "xmma_fprop", "sm90_xmma_fprop"),
                    "gemm": ("gemm", "nvjet", "cutlass", "sm90_xmma"), "norm": ("norm",)}
        unet = pipe.unet
        for batch in (2, 8):
            args = (torch.randn(batch, 4, 128, 128, device=device, dtype=torch.bfloat16), torch.tensor(500, device=device),
                    torch.randn(batch, 77, 2048, device=device, dtype=torch.bfloat16))
            cond = {"text_embeds": torch.randn(batch, 1280, device=device, dtype=torch.bfloat16),
                    "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * batch, device=device, dtype=torch.bfloat16)}
            with torch.no_grad():
                for _ in range(2):
                    unet(*args, added_cond_kwargs=cond)
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    unet(*args, added_cond_kwargs=cond)
                    torch.cuda.synchronize()
            totals: dict[str, float] = {}
            kernels = 0
            for event in prof.key_averages():
                self_us = getattr(event, "self_device_time_total", 0) or 0
                if self_us <= 0:
                    continue
                kernels += event.count
                name = event.key.lower()
                family = next((f for f, keys in families.items() if any(k in name for k in keys)), "elementwise/other")
                totals[family] = totals.get(family, 0.0) + self_us / 1000
            total_ms = sum(totals.values())
            bench.results[f"profile_batch{batch}"] = {"gpu_ms": total_ms, "kernels": kernels, "by_family_ms": totals,
                                                      "top": prof.key_averages().table(sort_by="self_device_time_total", row_limit=15)}
            split = ", ".join(f"{f} {ms:.1f} ms" for f, ms in sorted(totals.items(), key=lambda kv: -kv[1]))
            bench.rows.append((f"one UNet call, batch {batch}: GPU time by kernel family", f"{total_ms:.1f} ms", "", "",
                               f"{kernels} kernels; {split}"))
            print(bench.results[f"profile_batch{batch}"]["top"], flush=True)

    def interval() -> None:
        """The guidance interval (product default) against guiding all 30 steps, on the graphed generator."""
        gen: Generator = state.get("graphs_gen") or Generator(base, memory="full", cuda_graphs=True)  # type: ignore[assignment]
        a, _b = state["loras"]  # type: ignore[misc]
        full_image = None
        for label, setting in (("guidance at every step (PAWTRAIT_GUIDANCE_INTERVAL=off)", None),
                               ("guidance interval 0.28-5.42 (product default)", GuidanceInterval())):
            gen.recipe = Recipe(interval=setting)
            b1, peak = per_image(gen, 1, 5, lora=a)
            b4, peak4 = per_image(gen, 4, 2, lora=a)
            image = gen.generate(request(seed=7), pet=PET, lora=a).images[0]
            note = f"batch 4 peak {peak4:.1f} GiB"
            if full_image is None:
                full_image = image
            else:
                note += f"; mean |pixel diff| vs guidance everywhere {mean_pixel_diff(image, full_image):.2f} (random weights)"
            bench.row(f"CUDA graphs, pet merged, {label}", b1, b4, peak, note)
        gen.recipe = Recipe()

    def timeline() -> None:
        """Where one request's wall time goes: prompt encoding, the denoising loop, VAE decode, PIL conversion."""
        gen: Generator = state.get("graphs_gen") or Generator(base, memory="full", cuda_graphs=True)  # type: ignore[assignment]
        label = "compiled + graphs, interval" if gen.ahead is not None and gen.ahead.ready else "graphs, interval"
        a, _b = state["loras"]  # type: ignore[misc]
        spent: dict[str, float] = {}

        def timed(name: str, fn: Callable[..., object]) -> Callable[..., object]:
            def run(*args: object, **kwargs: object) -> object:
                torch.cuda.synchronize()
                start = time.perf_counter()
                result = fn(*args, **kwargs)
                torch.cuda.synchronize()
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
                return result
            return run

        patched = [(gen.pipe, "encode_prompt"), (gen, "_denoise"), (gen, "_decode"), (gen, "_in_vae_precision")]
        for owner, name in patched:
            setattr(owner, name, timed(name, getattr(owner, name)))
        try:
            for count in (1, 4):
                gen.generate(request(count), pet=PET, lora=a)
                spent.clear()
                runs = 3
                total = sum(sync_time(lambda: gen.generate(request(count, seed=run), pet=PET, lora=a))[0] for run in range(runs))
                parts = {"encode_prompt": spent["encode_prompt"], "denoise loop": spent["_denoise"] - spent["encode_prompt"],
                         "VAE decode": spent["_in_vae_precision"], "to PIL": spent["_decode"] - spent["_in_vae_precision"]}
                parts["rest"] = total - spent["_denoise"] - spent["_decode"]
                per = {name: seconds / runs / count for name, seconds in parts.items()}
                bench.results[f"timeline_b{count}"] = per
                bench.rows.append((f"where a request's time goes, batch {count} (s per image, {label})",
                                   f"{total / runs / count:.3f} s", "", "", ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in per.items())))
        finally:
            for owner, name in patched:
                delattr(owner, name)
        profiler = cProfile.Profile()
        profiler.runcall(lambda: (gen.generate(request(seed=9), pet=PET, lora=a), torch.cuda.synchronize()))
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(45)
        bench.results["timeline_b1_host_profile"] = text.getvalue()
        print(text.getvalue(), flush=True)

    def vae_compile() -> None:
        """The VAE decoder's ResNet blocks compiled like the UNet's (the decode is a fixed ~0.09 s per image)."""
        vae = pipe.vae
        latents = torch.randn(1, 4, 128, 128, device=device, dtype=torch.bfloat16)
        with torch.no_grad():
            vae.decode(latents)
            eager_s = statistics.median(sync_time(lambda: vae.decode(latents))[0] for _ in range(5))
            blocks = compiled_blocks(vae.decoder)
            with blocks.active():
                first_s, _ = sync_time(lambda: vae.decode(latents))
                compiled_s = statistics.median(sync_time(lambda: vae.decode(latents))[0] for _ in range(5))
            compiled = len(blocks.blocks)
        bench.results["vae_compile"] = {"eager_s": eager_s, "compiled_s": compiled_s, "first_s": first_s, "blocks": compiled}
        bench.rows.append(("VAE decode of one 1024² image, bf16: eager vs decoder blocks compiled",
                           f"{eager_s:.3f} s vs {compiled_s:.3f} s", "", "", f"{compiled} blocks; first compiled decode {first_s:.0f} s"))

    def fp8() -> None:
        """FP8 (e4m3) linear layers through torchao (activations and weights scaled per row) against bf16,
        both replayed from CUDA graphs, uncompiled (compiling the quantized UNet did not finish within
        575 s in D6): seconds per picture, and how far the same seeds' pictures move (compile's own
        difference is 0.48 mean levels). Quantizes the UNet in place: run it alone, in its own process."""
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        def paint(gen: Generator) -> tuple[list[Image.Image], float, float, float]:
            pictures = [gen.generate(request(1, seed=seed), pet=PET).images[0] for seed in range(3)]
            b1, peak = per_image(gen, 1, 3)
            b4, _ = per_image(gen, 4, 1)
            return pictures, b1, b4, peak

        gen = Generator(base, memory="full")
        bf16, b1, b4, peak = paint(gen)
        gen.release_graphs()
        with torch.no_grad():
            quantize_(pipe.unet, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        fp8, q1, q4, qpeak = paint(gen)
        apart = statistics.mean(mean_pixel_diff(x, y) for x, y in zip(bf16, fp8))
        bench.results["fp8"] = {"bf16_b1_s": b1, "bf16_b4_s": b4, "bf16_peak_gib": peak, "fp8_b1_s": q1, "fp8_b4_s": q4,
                                "fp8_peak_gib": qpeak, "levels_apart": apart}
        bench.row("bf16 linear layers, CUDA graphs, uncompiled (the reference of the next row)", b1, b4, peak)
        bench.row("FP8 linear layers (torchao, per-row), CUDA graphs, uncompiled", q1, q4, qpeak,
                  f"pictures {apart:.2f} mean levels from bf16's (compile's own difference: 0.48)")

    def saved_model() -> Path:
        model_dir = work / "model"
        if not model_dir.exists():
            pipe.unload_lora_weights()
            pipe.save_pretrained(model_dir)
        return model_dir

    def cold_child(*flags: str) -> dict[str, float]:
        child = subprocess.run([sys.executable, __file__, "--cold", str(saved_model()), *flags],
                               capture_output=True, text=True, timeout=560)
        if child.returncode != 0:
            raise RuntimeError(child.stderr[-2000:])
        return json.loads(child.stdout.strip().splitlines()[-1])

    def cold() -> None:
        numbers = cold_child()
        bench.results["cold"] = numbers
        bench.rows.append(("cold start: new process, load bf16 weights from local disk, first 1024² image",
                           f"{numbers['total_s']:.1f} s", "", "",
                           f"load {numbers['load_s']:.1f} s (incl. imports) + first request {numbers['first_request_s']:.1f} s"))

    def cold_compile() -> None:
        """Cold start with compile (the default), twice: the second process finds inductor's on-disk cache
        (TORCHINDUCTOR_CACHE_DIR, by default under /tmp) that the first one filled, as a restarted worker does.
        The first picture does not wait for the compiler; the worker compiles after it, as when idle."""
        for label in ("empty compile cache", "compile cache filled by the process before"):
            numbers = cold_child("--cold-compile")
            bench.results[f"cold_compile ({label})"] = numbers
            print(label, json.dumps(numbers), flush=True)
            bench.out.write_text(json.dumps(bench.results, indent=2, default=str))
            bench.rows.append((f"cold start with compile, {label}", f"{numbers['total_s']:.1f} s", "", "",
                               f"load {numbers['load_s']:.1f} s + first request {numbers['first_request_s']:.1f} s; then compiling "
                               f"1 and 4 images ahead {numbers['compile_ahead_s']:.0f} s (longest step "
                               f"{numbers['longest_compile_step_s']:.1f} s); first compiled picture "
                               f"{numbers['first_compiled_request_s']:.2f} s, {numbers['compiled_from_start_s']:.0f} s after the start; "
                               f"then {numbers['compiled_b1_s']:.3f} s (batch 1) / {numbers['compiled_b4_s']:.3f} s per image (batch 4), "
                               f"peak {numbers['peak_gib']:.1f} GiB; graphs compiled by requests: {numbers['graphs_compiled_by_requests']}"))

    phases = {"default": default_mode, "loras": loras, "vae": vae_precision,
              "fused_qkv": fused_qkv, "channels_last": channels_last, "cudnn_autotune": cudnn_autotune,
              "low_memory": low_memory, "cold": cold, "graphs": graphs, "compile_ahead": compile_ahead, "vae_batch": vae_batch,
              "graph_levers": graph_levers, "profile": profile_unet, "interval": interval, "timeline": timeline,
              "vae_compile": vae_compile, "fp8": fp8, "cold_compile": cold_compile}
    for name in args.phases.split(","):
        bench.phase(name, phases[name])
    args.out.write_text(json.dumps(bench.results, indent=2, default=str))
    print(f"\n{bench.results['card']}, torch {torch.__version__}, 1024x1024, 30 steps, guidance 5, build {bench.results['build_s']} s")
    print(bench.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
