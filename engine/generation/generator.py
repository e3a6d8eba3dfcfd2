"""The resident SDXL text-to-image pipeline that serves every pet: `Generator`.

One `Generator` per worker process wraps the shared `BaseModel` (the same UNet a training
run may be using between its steps). It adds what generation needs and training doesn't:
a scheduler that is good at 30 steps, pet LoRAs as cached adapters, per-image seeds, a
cheap preview every step, a VAE decode that never returns black images, and a memory mode.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionXLPipeline
from PIL import Image

from engine.device import free_memory_bytes
from engine.generation.loras import DEFAULT_CAPACITY, HOTSWAP_RANK, LoraCache, preserved_adapter_state
from engine.generation.previews import preview_image
from engine.generation.prompts import PreparedPrompt, prepare_prompts
from engine.generation.request import MAX_SEED, GenerationRequest
from engine.models import BaseModel
from engine.settings import Settings
from storage.pets import Pet

log = logging.getLogger(__name__)

# Below this much free GPU memory (with the weights already resident) a 1024² decode and
# the UNet's activations do not fit, so 'auto' picks the low-memory mode.
FULL_MODE_MIN_FREE = 4 * 2**30
SAMPLER_NAME = "DPM++ 2M Karras"  # what A1111 calls the scheduler built below

StepCallback = Callable[[int, int, Image.Image], None]


@dataclass(frozen=True)
class PetLora:
    """Which trained LoRA to apply: a checkpoint row's id and its diffusers-format file."""

    checkpoint_id: int
    path: Path


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    prompt: str  # after TOK substitution: what the model read
    negative_prompt: str
    width: int
    height: int
    sampler: str
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def karras_dpm_scheduler(pipe: StableDiffusionXLPipeline) -> DPMSolverMultistepScheduler:
    """DPM++ 2M with Karras sigmas from the model's own noise schedule: sharp at 20-30 steps."""
    return DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
    )


def choose_memory_mode(setting: str, device: torch.device) -> str:
    """'full' or 'low': the setting when forced, else from the free memory left beside the weights."""
    if setting in ("full", "low"):
        return setting
    free = free_memory_bytes(device)
    return "low" if free is not None and free < FULL_MODE_MIN_FREE else "full"


def draw_seed() -> int:
    return random.SystemRandom().randint(0, MAX_SEED - 3)


class Generator:
    """Text-to-image on the shared base model; one request at a time (calls are serialised).

    `memory`: 'full' keeps everything on the GPU; 'low' adds VAE tiling and model CPU
    offload (for a 16 GB card beside nothing else — offload moves the shared UNet between
    CPU and GPU, so a process in low mode must not train). `compile` compiles the UNet's
    repeated blocks and switches pets by LoRA hot-swap so a new pet does not recompile (on an
    H100 it measured no faster than eager with merged pets, so settings leave it off).
    `size_scale` renders the size presets smaller (tests, drafts).
    """

    def __init__(
        self,
        base: BaseModel,
        memory: str = "auto",
        compile: bool = False,
        lora_capacity: int = DEFAULT_CAPACITY,
        size_scale: float = 1.0,
    ) -> None:
        self.base = base
        # A second pipeline over the same modules with its own scheduler, so training keeps the
        # base pipe's. (Not `from_pipe`: it casts every shared module to float32 by default.)
        self.pipe = StableDiffusionXLPipeline(
            **{**base.pipe.components, "scheduler": karras_dpm_scheduler(base.pipe)},
            force_zeros_for_empty_prompt=base.pipe.config.force_zeros_for_empty_prompt,
            add_watermarker=False,
        )
        self.pipe.set_progress_bar_config(disable=True)
        self.memory = choose_memory_mode(memory, base.device)
        self.compiled = compile and base.device.type == "cuda"
        self.size_scale = size_scale
        self._lock = threading.Lock()
        self._setup_memory()
        if self.compiled:
            self._setup_compile()
        self.loras = LoraCache(self.pipe, capacity=lora_capacity, hotswap=self.compiled)

    @classmethod
    def from_settings(cls, base: BaseModel, settings: Settings) -> "Generator":
        return cls(base, memory=settings.generate_memory, compile=settings.compile)

    def _setup_memory(self) -> None:
        vae = self.pipe.vae
        vae.enable_slicing()  # one image at a time: batch 4 peaks no higher than batch 1 (8.8 GiB on SDXL)
        if self.memory == "low":
            vae.enable_tiling()
            if self.base.device.type == "cuda":
                self.pipe.enable_model_cpu_offload(device=self.base.device)
        log.info("generation memory mode: %s", self.memory)

    def _setup_compile(self) -> None:
        # Hot-swap must be prepared before the first adapter exists; a training adapter
        # already on the UNet is fine (it is never swapped).
        self.pipe.enable_lora_hotswap(target_rank=HOTSWAP_RANK, check_compiled="ignore")
        self.pipe.unet.compile_repeated_blocks(fullgraph=True)

    def output_size(self, request: GenerationRequest) -> tuple[int, int]:
        """Pixel size for the request's preset, scaled and kept to multiples of 32 (latents / 4)."""

        def snap(pixels: int) -> int:
            return max(64, math.floor(pixels * self.size_scale / 32 + 0.5) * 32)

        return snap(request.width), snap(request.height)

    def generate(
        self,
        request: GenerationRequest,
        pet: Pet | None = None,
        lora: PetLora | None = None,
        on_step: StepCallback | None = None,
    ) -> GenerationResult:
        """Run one validated request; `pet`/`lora` as resolved from storage (None for the plain base)."""
        request.validate()
        pipe = self.pipe
        prepared = prepare_prompts(request.prompt, request.negative_prompt, pet, [pipe.tokenizer, pipe.tokenizer_2])
        first_seed = request.seed if request.seed is not None else draw_seed()
        seeds = [first_seed + index for index in range(request.count)]
        width, height = self.output_size(request)
        callback = None
        if on_step is not None:

            def callback(_pipe: StableDiffusionXLPipeline, index: int, _t: object, tensors: dict) -> dict:
                on_step(index + 1, request.steps, preview_image(tensors["latents"]))
                return {}

        started = time.perf_counter()
        with self._lock, torch.no_grad(), preserved_adapter_state(pipe):
            pipe.unet.eval()
            if lora is not None and request.lora_scale > 0:
                applied = self.loras.applied(lora.checkpoint_id, lora.path, request.lora_scale)
            else:
                self.loras.deactivate()  # strength 0 is exactly the base model, not a 0-scaled LoRA
                applied = nullcontext()
            with applied:
                latents = self._denoise(prepared, request, seeds, width, height, callback)
            images = self._decode(latents)
        return GenerationResult(
            images=images,
            seeds=seeds,
            prompt=prepared.prompt,
            negative_prompt=prepared.negative_prompt,
            width=width,
            height=height,
            sampler=SAMPLER_NAME,
            warnings=prepared.warnings,
            seconds=time.perf_counter() - started,
        )

    def _denoise(
        self, prepared: PreparedPrompt, request: GenerationRequest, seeds: list[int], width: int, height: int,
        callback: Callable[..., dict] | None,
    ) -> torch.Tensor:
        """The pipeline's denoising loop, stopping at latents (the decode is ours: see `_decode`)."""
        return self.pipe(
            prompt=prepared.prompt,
            negative_prompt=prepared.negative_prompt or None,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance,
            width=width,
            height=height,
            num_images_per_prompt=request.count,
            # One CPU generator per image: image i is reproducible from seed + i alone.
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
            output_type="latent",
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=["latents"],
        ).images

    def _decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """VAE decode in the model's half precision; on overflow (NaN: a black image) redo it in fp32."""
        vae = self.pipe.vae
        config = vae.config
        if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
            mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / config.scaling_factor + mean
        else:
            latents = latents / config.scaling_factor
        vae_dtype = next(vae.post_quant_conv.parameters()).dtype
        pixels = vae.decode(latents.to(vae_dtype), return_dict=False)[0]
        if not torch.isfinite(pixels).all():
            # The original SDXL VAE overflows in fp16; fp32 from now on costs ~2x decode time.
            log.warning("the VAE overflowed in %s; decoding in float32 from now on", vae_dtype)
            vae.to(torch.float32)
            pixels = vae.decode(latents.to(torch.float32), return_dict=False)[0]
        return self.pipe.image_processor.postprocess(pixels, output_type="pil")
