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
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from peft import LoraConfig, get_peft_model_state_dict
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness
from harness import levels_apart, timed
from sdxl_random import build_sdxl

from engine.gpu.compile import compiled_blocks
from engine.gpu.generation.generator import Generator, PetLora
from engine.gpu.generation.guidance import GuidanceInterval
from engine.gpu.generation.recipe import Recipe
from engine.gpu.models import BaseModel
from engine.usecases.generation.request import GenerationRequest
from storage.pets import Pet

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


def request(count: int = 1, seed: int = 0, **extra) -> GenerationRequest:
    return GenerationRequest(prompt="a photo of TOK cat on a sofa, golden hour", negative_prompt="blurry",
                             steps=30, guidance=5.0, size="1:1", count=count, seed=seed, **extra)


def per_image(gen: Generator, count: int, runs: int, **kwargs) -> tuple[float, float]:
    """Median seconds per image over `runs` and the peak GiB allocated, after one warm-up.

    The pet is always named (its token is in the prompt); without `lora` that is the plain base.
    """
    kwargs.setdefault("pet", PET)
    gen.generate(request(count), **kwargs)
    harness.reset_peak()
    times = [timed(lambda: gen.generate(request(count, seed=run), **kwargs))[0] for run in range(runs)]
    return statistics.median(times) / count, harness.peak_gib()


def compile_everything_wanted(gen: Generator) -> tuple[float, list[float]]:
    """Run the worker's idle-time compiling to its end: (total seconds, seconds of each step)."""
    steps = []
    started = time.perf_counter()
    while True:
        seconds, more = timed(gen.compile_ahead)
        if not more:
            return time.perf_counter() - started, steps
        steps.append(seconds)


def unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


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
        numbers["first_compiled_request_s"] = timed(lambda: gen.generate(request(), pet=PET))[0]
        numbers["compiled_from_start_s"] = time.perf_counter() - started
        numbers["compiled_b1_s"], numbers["peak_gib"] = per_image(gen, 1, 5)
        numbers["compiled_b4_s"], _ = per_image(gen, 4, 3)
        numbers["graphs_compiled_by_requests"] = unique_graphs() - graphs
    print(json.dumps(numbers))


@dataclass
class Session:
    """What the phases share: the model, the generators and LoRAs earlier phases made, the results
    and the table's rows."""

    out: Path
    device: torch.device
    pipe: StableDiffusionXLPipeline
    base: BaseModel
    work: Path
    results: harness.Results
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    eager: Generator | None = None  # without CUDA graphs (default, loras)
    loras: list[PetLora] = field(default_factory=list)  # two pets (loras)
    graphs_gen: Generator | None = None  # the graphed generator the later phases measure on

    def eager_generator(self) -> Generator:
        if self.eager is None:
            self.eager = Generator(self.base, memory="full", cuda_graphs=False)
        return self.eager

    def graphed_generator(self) -> Generator:
        return self.graphs_gen or Generator(self.base, memory="full", cuda_graphs=True)

    def phase(self, name: str, run: Callable[[Session], None]) -> None:
        print(f"--- {name}", flush=True)
        started = time.perf_counter()
        try:
            run(self)
        except Exception as error:  # noqa: BLE001 - a failed lever is a result too; the others still run
            traceback.print_exc()
            self.results[f"{name}.error"] = harness.failure(error)
            self.rows.append((name, "failed", "", "", f"{type(error).__name__}: {str(error)[:80]}"))
        self.results[f"{name}.phase_s"] = round(time.perf_counter() - started, 1)
        self.results.save()

    def row(self, lever: str, b1: float | None = None, b4: float | None = None, peak: float | None = None, note: str = "") -> None:
        fmt = lambda value, unit: "" if value is None else f"{value:.3f} {unit}" if unit == "s" else f"{value:.1f} {unit}"  # noqa: E731
        self.rows.append((lever, fmt(b1, "s"), fmt(b4, "s"), fmt(peak, "GiB"), note))
        self.results[lever] = {"s_per_image_b1": b1, "s_per_image_b4": b4, "peak_gib": peak, "note": note}
        print(f"{lever}: b1={b1} b4={b4} peak={peak} {note}", flush=True)

    def table(self) -> str:
        return harness.markdown_table(("configuration", "s/image, batch 1", "s/image, batch 4", "peak GPU memory", "note"),
                                      self.rows)


def phase_build(out: Path) -> Session:
    """SDXL-base-1.0 with random weights on the GPU in bf16, as the resident base model."""
    device = torch.device("cuda")
    work = Path(tempfile.mkdtemp(prefix="gen-bench-"))
    results = harness.Results(out, **harness.provenance(device))
    build_s, pipe = timed(lambda: build_sdxl(device, torch.bfloat16, work / "tokenizer"))
    results["build_s"] = round(build_s, 1)
    base = BaseModel(pipe=pipe, device=device, dtype=torch.bfloat16, model_id="sdxl-base-1.0-random", vae_id=None)
    return Session(out, device, pipe, base, work, results)


def phase_default(session: Session) -> None:
    first_s, gen = timed(lambda: Generator(session.base, memory="full", cuda_graphs=False))
    first_request_s, _ = timed(lambda: gen.generate(request(), pet=PET))
    session.results["first_request_in_process_s"] = round(first_s + first_request_s, 2)
    session.eager = gen
    b1, peak1 = per_image(gen, 1, 3)
    b4, peak4 = per_image(gen, 4, 1)
    session.row("eager (no CUDA graphs), plain base: bf16, SDPA, DPM++ 2M Karras, bf16 VAE decode", b1, b4, peak1,
                f"batch 4 peak {peak4:.1f} GiB; first request in a fresh process after build {first_s + first_request_s:.1f} s")


def phase_loras(session: Session) -> None:
    gen = session.eager_generator()
    files = [make_lora(session.pipe.unet, seed, session.work / f"lora-{seed}") for seed in (1, 2)]
    session.loras = [PetLora(str(file), file) for file in files]
    a, b = session.loras

    def apply(lora: PetLora) -> None:
        with gen.loras.applied(lora.key, lora.path, 1.0):
            pass

    load_a, _ = timed(lambda: apply(a))
    load_b, _ = timed(lambda: apply(b))
    switches = [timed(lambda lora=lora: apply(lora))[0] for lora in (a, b, a, b, a)]
    b1, peak = per_image(gen, 1, 3, lora=a)
    b4, _ = per_image(gen, 4, 1, lora=a)
    base_after, _ = per_image(gen, 1, 2)
    session.results["base_after_pets_s"] = base_after
    session.results["lora_first_load_s"] = [round(load_a, 3), round(load_b, 3)]
    session.results["lora_switch_s"] = [round(seconds, 4) for seconds in switches]
    session.row("eager + pet LoRA (rank 4, merged into the weights per request)", b1, b4, peak,
                f"first use (read from disk) {load_a:.2f}/{load_b:.2f} s; switch to a cached pet "
                f"(merge + restore) {statistics.median(switches) * 1000:.0f} ms; plain base after pets {base_after:.3f} s")


def phase_vae(session: Session) -> None:
    vae = session.pipe.vae
    latents = torch.randn(1, 4, 128, 128, device=session.device, dtype=torch.bfloat16)
    with torch.no_grad():
        vae.decode(latents / 0.13025)
        bf16_s = statistics.median(timed(lambda: vae.decode(latents / 0.13025))[0] for _ in range(3))
        vae.to(torch.float32)
        vae.decode(latents.float() / 0.13025)
        harness.reset_peak()
        fp32_s = statistics.median(timed(lambda: vae.decode(latents.float() / 0.13025))[0] for _ in range(3))
        fp32_peak = harness.peak_gib()
        vae.to(torch.bfloat16)
    session.results["vae_decode_s"] = {"bf16": bf16_s, "fp32": fp32_s, "fp32_peak_gib": fp32_peak}
    session.rows.append(("VAE decode of one 1024² image: bf16 vs fp32 (SDXL config's upcast)",
                         f"{bf16_s:.3f} s vs {fp32_s:.3f} s", "", "", "the product decodes in bf16, fp32 only after a NaN"))


def phase_channels_last(session: Session) -> None:
    gen = session.eager
    session.pipe.unet.to(memory_format=torch.channels_last)
    session.pipe.vae.to(memory_format=torch.channels_last)
    b1, peak = per_image(gen, 1, 3)
    session.row("+ channels-last UNet and VAE", b1, None, peak)


def phase_fused_qkv(session: Session) -> None:
    gen = session.eager
    a, _b = session.loras
    img_unfused_lora = gen.generate(request(), pet=PET, lora=a).images[0]
    session.pipe.fuse_qkv_projections()
    b1, peak = per_image(gen, 1, 3)
    img_fused_base = gen.generate(request(), pet=PET).images[0]
    img_fused_lora = gen.generate(request(), pet=PET, lora=a).images[0]
    session.pipe.unfuse_qkv_projections()
    img_unfused_base = gen.generate(request(), pet=PET).images[0]
    note = (f"mean |pixel diff|: pet LoRA vs base {levels_apart(img_unfused_lora, img_unfused_base):.2f} unfused; "
            f"with fused QKV the LoRA image differs from the unfused LoRA image by {levels_apart(img_fused_lora, img_unfused_lora):.2f} "
            f"(fused vs unfused base: {levels_apart(img_fused_base, img_unfused_base):.2f})")
    session.results["fused_qkv_lora_check"] = note
    session.row("+ fused QKV projections (base model)", b1, None, peak, note)


def phase_cudnn_autotune(session: Session) -> None:
    gen = session.eager
    torch.backends.cudnn.benchmark = True
    b1, peak = per_image(gen, 1, 3)
    torch.backends.cudnn.benchmark = False
    session.row("+ cudnn.benchmark (base model)", b1, None, peak)


def phase_low_memory(session: Session) -> None:
    gen = Generator(session.base, memory="low")  # offload moves the weights: no CUDA graphs there
    a, _b = session.loras
    b1, peak = per_image(gen, 1, 2, lora=a)
    session.row("low-memory mode (model CPU offload + VAE tiling), with pet LoRA", b1, None, peak)
    session.pipe.remove_all_hooks()
    session.pipe.vae.disable_tiling()
    session.pipe.to(session.device)


def phase_graphs(session: Session) -> None:
    """The product's default: the denoising loop's UNet calls replayed from CUDA graphs."""
    eager = session.eager
    a, b = session.loras
    reference = eager.generate(request(seed=7), pet=PET, lora=a).images[0]
    gen = Generator(session.base, memory="full", cuda_graphs=True)
    first_s, first = timed(lambda: gen.generate(request(seed=7), pet=PET, lora=a))
    same = levels_apart(first.images[0], reference)
    b1, peak = per_image(gen, 1, 5, lora=a)
    b1_other, _ = per_image(gen, 1, 3, lora=b)
    again = gen.generate(request(seed=7), pet=PET, lora=a).images[0]
    base_b1, _ = per_image(gen, 1, 3)
    b4, peak4 = per_image(gen, 4, 2, lora=a)
    session.results["graphs"] = {"first_request_s": first_s, "pixel_diff_vs_eager": same,
                                 "pixel_diff_after_other_pet": levels_apart(again, reference), "peak_b4_gib": peak4}
    session.row("CUDA graphs over the UNet calls (product default), pet merged", b1, b4, peak,
                f"first request (warm-up + capture) {first_s:.2f} s; mean |pixel diff| vs eager {same:.3f}, "
                f"after another pet {levels_apart(again, reference):.3f}; other pet {b1_other:.3f} s; "
                f"plain base {base_b1:.3f} s; batch 4 peak {peak4:.1f} GiB")
    session.graphs_gen = gen


def phase_compile_ahead(session: Session) -> None:
    """The product default: a request shape runs eagerly (CUDA graphs) until the worker's idle
    time has compiled its blocks ahead; then it runs compiled (+ CUDA graphs)."""
    old, session.graphs_gen = session.graphs_gen, None
    if old is not None:
        old.release_graphs()
    session.pipe.unload_lora_weights()
    a, b = session.loras
    gen = Generator(session.base, memory="full", compile=True)
    first_s, _ = timed(lambda: gen.generate(request(), pet=PET, lora=a))
    eager_b1, _ = per_image(gen, 1, 3, lora=a)
    eager_b4, _ = per_image(gen, 4, 2, lora=a)
    reference = gen.generate(request(seed=7), pet=PET, lora=a).images[0]
    graphs_before = unique_graphs()
    # Idle time, with a picture requested now and then, as the worker interleaves them.
    steps: list[float] = []
    served: list[float] = []
    started = last = time.perf_counter()
    while True:
        seconds, more = timed(gen.compile_ahead)
        if not more:
            break
        steps.append(seconds)
        if time.perf_counter() - last > 30:
            print(f"=== serving a picture while compiling ahead ({sorted(gen.ahead.ready)} ready)", flush=True)  # type: ignore[union-attr]
            served.append(timed(lambda: gen.generate(request(seed=1), pet=PET, lora=a))[0])
            print(f"=== served in {served[-1]:.2f} s", flush=True)
            last = time.perf_counter()
    compile_s = time.perf_counter() - started
    print("=== compiled ahead: from here on no request should compile", flush=True)
    graphs = unique_graphs()
    first_compiled_s, image = timed(lambda: gen.generate(request(seed=7), pet=PET, lora=a))
    diff = levels_apart(image.images[0], reference)
    b1, peak = per_image(gen, 1, 5, lora=a)
    b1_other, _ = per_image(gen, 1, 3, lora=b)
    base_b1, _ = per_image(gen, 1, 3)
    b4, peak4 = per_image(gen, 4, 3, lora=a)
    switch_graphs = unique_graphs() - graphs
    session.graphs_gen = gen
    session.results["compile_ahead"] = {
        "first_request_s": first_s, "eager_b1": eager_b1, "eager_b4": eager_b4, "compile_s": compile_s,
        "steps": len(steps), "longest_step_s": max(steps), "median_step_s": statistics.median(steps),
        "served_while_compiling_s": served, "dynamo_graphs": graphs - graphs_before,
        "first_compiled_request_s": first_compiled_s, "pixel_diff_vs_eager": diff, "peak_b4_gib": peak4,
        "new_graphs_after_compiling": switch_graphs,
    }
    session.row("CUDA graphs, not compiled yet (what requests get while the worker compiles), pet merged", eager_b1, eager_b4, None,
                f"first request in the process {first_s:.2f} s")
    session.row("compiled ahead (transformer + ResNet blocks, static shapes) + CUDA graphs, pet merged, guidance interval",
                b1, b4, peak,
                f"compiling 1 and 4 images at 1024² took {compile_s:.0f} s in {len(steps)} steps (longest {max(steps):.1f} s, "
                f"median {statistics.median(steps):.1f} s); pictures served meanwhile {', '.join(f'{x:.2f}' for x in served)} s; "
                f"first compiled request {first_compiled_s:.2f} s; mean |pixel diff| vs eager {diff:.2f}; other pet {b1_other:.3f} s, "
                f"plain base {base_b1:.3f} s, new dynamo graphs after compiling ahead {switch_graphs}; batch 4 peak {peak4:.1f} GiB")


def phase_vae_batch(session: Session) -> None:
    """The VAE decode of a batch of 4: one image at a time (the product: batch 4 peaks no higher than
    batch 1) against all four at once, with the compiled decoder blocks."""
    gen = session.graphs_gen
    vae = session.pipe.vae
    latents = torch.randn(4, 4, 128, 128, device=session.device, dtype=torch.bfloat16)
    numbers = {}
    with gen.ahead.decoder_blocks.active():  # type: ignore[union-attr]
        for label, slicing in (("one at a time", True), ("all four at once", False)):
            vae.use_slicing = slicing
            first_s, _ = timed(lambda: gen._decode(latents))
            harness.reset_peak()
            seconds = statistics.median(timed(lambda: gen._decode(latents))[0] for _ in range(5))
            numbers[label] = {"s_per_image": seconds / 4, "first_s": first_s, "peak_gib": harness.peak_gib()}
    vae.use_slicing = True
    session.results["vae_batch"] = numbers
    session.rows.append(("VAE decode of 4 images at 1024², compiled blocks: one at a time vs all at once (s per image)",
                         " vs ".join(f"{n['s_per_image']:.4f}" for n in numbers.values()), "", "",
                         " vs ".join(f"peak {n['peak_gib']:.1f} GiB" for n in numbers.values())))


def phase_graph_levers(session: Session) -> None:
    """Levers on GPU time, now that CUDA graphs removed the launch overhead they used to hide behind."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = session.graphed_generator()
    a, _b = session.loras

    def measure(label: str) -> None:
        gen.release_graphs()  # new weight layouts or kernels: capture again
        b1, _ = per_image(gen, 1, 3, lora=a)
        b4, peak = per_image(gen, 4, 1, lora=a)
        session.row(f"CUDA graphs + {label}", b1, b4, peak)

    torch.backends.cudnn.benchmark = True
    measure("cudnn.benchmark")
    session.pipe.unet.to(memory_format=torch.channels_last)
    measure("channels-last UNet + cudnn.benchmark")
    torch.backends.cudnn.benchmark = False
    measure("channels-last UNet")
    session.pipe.unet.to(memory_format=torch.contiguous_format)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        measure("cuDNN attention (SDPA backend)")
    gen.release_graphs()


def phase_profile(session: Session) -> None:
    """Where one UNet call's GPU time goes, by kernel family, at batch 2 (one image with CFG) and 8."""
    from torch.profiler import ProfilerActivity, profile

    families = {"attention": ("flash", "fmha", "attention"), "conv": ("conv", "implicit_gemm", "cudnn", "xmma_fprop", "sm90_xmma_fprop"),
                "gemm": ("gemm", "nvjet", "cutlass", "sm90_xmma"), "norm": ("norm",)}
    unet = session.pipe.unet
    for batch in (2, 8):
        args = (torch.randn(batch, 4, 128, 128, device=session.device, dtype=torch.bfloat16), torch.tensor(500, device=session.device),
                torch.randn(batch, 77, 2048, device=session.device, dtype=torch.bfloat16))
        cond = {"text_embeds": torch.randn(batch, 1280, device=session.device, dtype=torch.bfloat16),
                "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * batch, device=session.device, dtype=torch.bfloat16)}
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
        session.results[f"profile_batch{batch}"] = {"gpu_ms": total_ms, "kernels": kernels, "by_family_ms": totals,
                                                    "top": prof.key_averages().table(sort_by="self_device_time_total", row_limit=15)}
        split = ", ".join(f"{f} {ms:.1f} ms" for f, ms in sorted(totals.items(), key=lambda kv: -kv[1]))
        session.rows.append((f"one UNet call, batch {batch}: GPU time by kernel family", f"{total_ms:.1f} ms", "", "",
                             f"{kernels} kernels; {split}"))
        print(session.results[f"profile_batch{batch}"]["top"], flush=True)


def phase_interval(session: Session) -> None:
    """The guidance interval (product default) against guiding all 30 steps, on the graphed generator."""
    gen = session.graphed_generator()
    a, _b = session.loras
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
            note += f"; mean |pixel diff| vs guidance everywhere {levels_apart(image, full_image):.2f} (random weights)"
        session.row(f"CUDA graphs, pet merged, {label}", b1, b4, peak, note)
    gen.recipe = Recipe()


def phase_timeline(session: Session) -> None:
    """Where one request's wall time goes: prompt encoding, the denoising loop, VAE decode, PIL conversion."""
    gen = session.graphed_generator()
    label = "compiled + graphs, interval" if gen.ahead is not None and gen.ahead.ready else "graphs, interval"
    a, _b = session.loras
    spent: dict[str, float] = {}

    def timing(name: str, fn: Callable[..., object]) -> Callable[..., object]:
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
        setattr(owner, name, timing(name, getattr(owner, name)))
    try:
        for count in (1, 4):
            gen.generate(request(count), pet=PET, lora=a)
            spent.clear()
            runs = 3
            total = sum(timed(lambda: gen.generate(request(count, seed=run), pet=PET, lora=a))[0] for run in range(runs))
            parts = {"encode_prompt": spent["encode_prompt"], "denoise loop": spent["_denoise"] - spent["encode_prompt"],
                     "VAE decode": spent["_in_vae_precision"], "to PIL": spent["_decode"] - spent["_in_vae_precision"]}
            parts["rest"] = total - spent["_denoise"] - spent["_decode"]
            per = {name: seconds / runs / count for name, seconds in parts.items()}
            session.results[f"timeline_b{count}"] = per
            session.rows.append((f"where a request's time goes, batch {count} (s per image, {label})",
                                 f"{total / runs / count:.3f} s", "", "", ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in per.items())))
    finally:
        for owner, name in patched:
            delattr(owner, name)
    profiler = cProfile.Profile()
    profiler.runcall(lambda: (gen.generate(request(seed=9), pet=PET, lora=a), torch.cuda.synchronize()))
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(45)
    session.results["timeline_b1_host_profile"] = text.getvalue()
    print(text.getvalue(), flush=True)


def phase_vae_compile(session: Session) -> None:
    """The VAE decoder's ResNet blocks compiled like the UNet's (the decode is a fixed ~0.09 s per image)."""
    vae = session.pipe.vae
    latents = torch.randn(1, 4, 128, 128, device=session.device, dtype=torch.bfloat16)
    with torch.no_grad():
        vae.decode(latents)
        eager_s = statistics.median(timed(lambda: vae.decode(latents))[0] for _ in range(5))
        blocks = compiled_blocks(vae.decoder)
        with blocks.active():
            first_s, _ = timed(lambda: vae.decode(latents))
            compiled_s = statistics.median(timed(lambda: vae.decode(latents))[0] for _ in range(5))
        compiled = len(blocks.blocks)
    session.results["vae_compile"] = {"eager_s": eager_s, "compiled_s": compiled_s, "first_s": first_s, "blocks": compiled}
    session.rows.append(("VAE decode of one 1024² image, bf16: eager vs decoder blocks compiled",
                         f"{eager_s:.3f} s vs {compiled_s:.3f} s", "", "", f"{compiled} blocks; first compiled decode {first_s:.0f} s"))


def phase_fp8(session: Session) -> None:
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

    gen = Generator(session.base, memory="full")
    bf16, b1, b4, peak = paint(gen)
    gen.release_graphs()
    with torch.no_grad():
        quantize_(session.pipe.unet, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    fp8, q1, q4, qpeak = paint(gen)
    apart = statistics.mean(levels_apart(x, y) for x, y in zip(bf16, fp8))
    session.results["fp8"] = {"bf16_b1_s": b1, "bf16_b4_s": b4, "bf16_peak_gib": peak, "fp8_b1_s": q1, "fp8_b4_s": q4,
                              "fp8_peak_gib": qpeak, "levels_apart": apart}
    session.row("bf16 linear layers, CUDA graphs, uncompiled (the reference of the next row)", b1, b4, peak)
    session.row("FP8 linear layers (torchao, per-row), CUDA graphs, uncompiled", q1, q4, qpeak,
                f"pictures {apart:.2f} mean levels from bf16's (compile's own difference: 0.48)")


def saved_model(session: Session) -> Path:
    model_dir = session.work / "model"
    if not model_dir.exists():
        session.pipe.unload_lora_weights()
        session.pipe.save_pretrained(model_dir)
    return model_dir


def cold_child(session: Session, *flags: str) -> dict[str, float]:
    child = subprocess.run([sys.executable, __file__, "--cold", str(saved_model(session)), *flags],
                           capture_output=True, text=True, timeout=560)
    if child.returncode != 0:
        raise RuntimeError(child.stderr[-2000:])
    return json.loads(child.stdout.strip().splitlines()[-1])


def phase_cold(session: Session) -> None:
    numbers = cold_child(session)
    session.results["cold"] = numbers
    session.rows.append(("cold start: new process, load bf16 weights from local disk, first 1024² image",
                         f"{numbers['total_s']:.1f} s", "", "",
                         f"load {numbers['load_s']:.1f} s (incl. imports) + first request {numbers['first_request_s']:.1f} s"))


def phase_cold_compile(session: Session) -> None:
    """Cold start with compile (the default), twice: the second process finds inductor's on-disk cache
    (TORCHINDUCTOR_CACHE_DIR, by default under /tmp) that the first one filled, as a restarted worker does.
    The first picture does not wait for the compiler; the worker compiles after it, as when idle."""
    for label in ("empty compile cache", "compile cache filled by the process before"):
        numbers = cold_child(session, "--cold-compile")
        session.results[f"cold_compile ({label})"] = numbers
        print(label, json.dumps(numbers), flush=True)
        session.results.save()
        session.rows.append((f"cold start with compile, {label}", f"{numbers['total_s']:.1f} s", "", "",
                             f"load {numbers['load_s']:.1f} s + first request {numbers['first_request_s']:.1f} s; then compiling "
                             f"1 and 4 images ahead {numbers['compile_ahead_s']:.0f} s (longest step "
                             f"{numbers['longest_compile_step_s']:.1f} s); first compiled picture "
                             f"{numbers['first_compiled_request_s']:.2f} s, {numbers['compiled_from_start_s']:.0f} s after the start; "
                             f"then {numbers['compiled_b1_s']:.3f} s (batch 1) / {numbers['compiled_b4_s']:.3f} s per image (batch 4), "
                             f"peak {numbers['peak_gib']:.1f} GiB; graphs compiled by requests: {numbers['graphs_compiled_by_requests']}"))


PHASES: dict[str, Callable[[Session], None]] = {
    "default": phase_default, "loras": phase_loras, "vae": phase_vae, "fused_qkv": phase_fused_qkv,
    "channels_last": phase_channels_last, "cudnn_autotune": phase_cudnn_autotune, "low_memory": phase_low_memory,
    "cold": phase_cold, "graphs": phase_graphs, "compile_ahead": phase_compile_ahead, "vae_batch": phase_vae_batch,
    "graph_levers": phase_graph_levers, "profile": phase_profile, "interval": phase_interval,
    "timeline": phase_timeline, "vae_compile": phase_vae_compile, "fp8": phase_fp8, "cold_compile": phase_cold_compile,
}


def main() -> int:
    parser = harness.parser(__doc__, out="generate_sdxl.json")
    parser.add_argument("--phases", default="default,loras,graphs,graph_levers,profile,vae,low_memory,cold,compile_ahead",
                        help=f"comma-separated phases to run, in this order (default: all); of {', '.join(PHASES)}")
    parser.add_argument("--cold", metavar="MODEL_DIR", help=argparse.SUPPRESS)  # the cold-start child process
    parser.add_argument("--cold-compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold:
        cold_start(args.cold, compile=args.cold_compile)
        return 0

    phases = harness.selected(args.phases, PHASES)
    session = phase_build(args.out)
    for name, run in phases:
        session.phase(name, run)
    print(f"\n{session.results['card']}, torch {torch.__version__}, 1024x1024, 30 steps, guidance 5, "
          f"build {session.results['build_s']} s")
    print(session.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
