"""The resident SDXL pipelines that serve every pet: `Generator`.

One `Generator` per worker process wraps the shared `BaseModel` (the same UNet a training
run may be using between its steps). It adds what generation needs and training doesn't:
a scheduler that is good at 30 steps, pet LoRAs as cached adapters, per-image seeds, a
cheap preview every step, a VAE decode that never returns black images, a memory mode,
and variations (img2img from an earlier picture) over the very same modules.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from PIL import Image

from config.settings import Settings
from engine.gpu.compile import CompiledBlocks, compiled_blocks
from engine.gpu.cuda_graphs import graphs_supported
from engine.gpu.device import PICTURE_ROOM, free_memory_bytes
from engine.gpu.generation.compile_ahead import CompileAhead
from engine.gpu.generation.guidance import GuidanceInterval
from engine.gpu.generation.loras import (
    DEFAULT_CAPACITY,
    LoraCache,
    has_adapters,
    merged_adapter,
    preserved_adapter_state,
)
from engine.gpu.generation.previews import preview_image
from engine.gpu.generation.prompts import PreparedPrompt, prepare_prompts
from engine.gpu.generation.recipe import DEFAULT_RECIPE, Recipe
from engine.gpu.generation.renders import Render
from engine.gpu.generation.text_graphs import TextEncoderGraphs
from engine.gpu.generation.unet_graphs import UNetGraphs
from engine.gpu.models import BaseModel
from engine.usecases.generation.request import MAX_SEED, GenerationRequest
from storage.pets import Pet

log = logging.getLogger(__name__)

# on_step(step, total, preview): `preview()` renders the cheap latent preview on demand, so a
# caller that shows one a second does not pay a GPU sync and a copy at every step.
Preview = Callable[[], Image.Image]
StepCallback = Callable[[int, int, Preview], None]


@dataclass(frozen=True)
class PetLora:
    """Which trained LoRA to apply: its diffusers-format file's key in the file store (unique to
    that file: it carries a random tag) and a local copy."""

    key: str
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
    denoising_strength: float | None = None  # set for a variation (img2img)
    guidance_interval: GuidanceInterval | None = None  # set when guidance ran only inside it


def choose_memory_mode(setting: str, device: torch.device) -> str:
    """'full' or 'low': the setting when forced, else from the free memory left beside the weights."""
    if setting in ("full", "low"):
        return setting
    free = free_memory_bytes(device)
    return "low" if free is not None and free < PICTURE_ROOM else "full"  # the picture would not fit beside the weights


def draw_seed() -> int:
    return random.SystemRandom().randint(0, MAX_SEED - 3)


class Generator:
    """Text-to-image and variations on the shared base model; one request at a time (calls are serialised).

    `memory`: 'full' keeps everything on the GPU; 'low' adds VAE tiling and model CPU
    offload (what an 8 GB card gets: offload moves the shared UNet between CPU and GPU, and a
    training on it brings the UNet back before each step). `compile` (full memory mode on CUDA)
    runs the UNet's and the VAE decoder's blocks compiled (engine/gpu/compile.py) for request shapes
    compiled ahead by `compile_ahead()`, which the worker calls when idle; other shapes run
    eagerly meanwhile (compile_ahead.py). `cuda_graphs` replays the denoising loop's UNet calls
    and the prompt encoding from CUDA graphs (full memory mode on CUDA: see unet_graphs.py,
    text_graphs.py).
    `recipe` (recipe.py): the sampler, and the guidance interval requests are painted with (better
    pictures from 45 UNet passes instead of 60), and everything of how a training's validation
    rounds and class images are painted.
    `size_scale` renders the size presets smaller (tests, drafts, a smaller native resolution).
    """

    def __init__(
        self,
        base: BaseModel,
        memory: str = "auto",
        compile: bool = False,
        compile_backend: str | Callable[..., Any] = "inductor",
        lora_capacity: int = DEFAULT_CAPACITY,
        size_scale: float = 1.0,
        cuda_graphs: bool = True,
        recipe: Recipe = DEFAULT_RECIPE,
    ) -> None:
        self.base = base
        self.recipe = recipe
        # A second pipeline over the same modules with its own scheduler, so training keeps the
        # base pipe's. (Not `from_pipe`: it casts every shared module to float32 by default.)
        self.pipe = StableDiffusionXLPipeline(
            **{**base.pipe.components, "scheduler": recipe.scheduler(base.pipe)},
            force_zeros_for_empty_prompt=base.pipe.config.force_zeros_for_empty_prompt,
            add_watermarker=False,
        )
        self.pipe.set_progress_bar_config(disable=True)
        # Variations: img2img over the same modules (no second copy of any weight), with its own
        # scheduler instance because img2img sets the scheduler's begin index for the skipped steps.
        self.variation_pipe = StableDiffusionXLImg2ImgPipeline(
            **{**base.pipe.components, "scheduler": recipe.scheduler(base.pipe)},
            requires_aesthetics_score=False,  # the base model's UNet; only the refiner takes aesthetic scores
            force_zeros_for_empty_prompt=base.pipe.config.force_zeros_for_empty_prompt,
            add_watermarker=False,
        )
        self.variation_pipe.set_progress_bar_config(disable=True)
        self.memory = choose_memory_mode(memory, base.device)
        self.size_scale = size_scale
        self._lock = threading.Lock()
        self._setup_memory()
        # (compile_backend other than inductor: tests, which compile on the CPU too)
        compiles = compile and self.memory == "full" and (base.device.type == "cuda" or compile_backend != "inductor")
        self.ahead = CompileAhead(self.pipe, compile_backend) if compiles else None
        if self.ahead is not None:
            for count in (1, 4):  # the bot's default request, then a full batch
                self.ahead.want((count, *self.output_size(GenerationRequest(prompt="-", count=count))))
        self.loras = LoraCache(self.pipe, capacity=lora_capacity)
        usable = cuda_graphs and graphs_supported(base.device) and self.memory == "full"
        self.unet_graphs = UNetGraphs(self.pipe.unet) if usable else None
        encoders = [encoder for encoder in (self.pipe.text_encoder, self.pipe.text_encoder_2) if encoder is not None]
        self.text_graphs = TextEncoderGraphs(encoders) if usable else None

    @classmethod
    def from_settings(cls, base: BaseModel, settings: Settings) -> Generator:
        """The presets are SDXL's ~1 MP at its native 1024; a model configured at another native
        side (PAWTRAIT_RESOLUTION, e.g. a small test model) paints them scaled to match."""
        return cls(
            base, memory=settings.generate_memory, compile=settings.compile, size_scale=settings.resolution / 1024,
            cuda_graphs=settings.cuda_graphs, recipe=Recipe.from_settings(settings),
        )

    def compile_ahead(self) -> bool:
        """Compile one more block variant for the request shapes still waiting to run compiled;
        False when there is nothing to do (nothing wanted, compile off, or a training is paused
        on the UNet). Takes seconds: call it when no request is waiting."""
        if self.ahead is None or not self.ahead.pending:
            return False
        with self._lock, torch.no_grad():
            if has_adapters(self.pipe):
                return False  # its layers are not what requests run; compile after the training
            if self.pipe.unet.training:
                self.pipe.unet.eval()
            try:
                return self.ahead.step()
            except Exception:
                log.exception("compiling ahead failed; pictures keep running without torch.compile")
                self.ahead = None
                return False

    def release_graphs(self) -> None:
        """Give the CUDA graphs' memory back (before a training, or after running out of memory)."""
        if self.unet_graphs is not None and self.text_graphs is not None:
            self.unet_graphs.release()
            self.text_graphs.release()

    def _setup_memory(self) -> None:
        vae = self.pipe.vae
        vae.enable_slicing()  # one image at a time: batch 4 peaks no higher than batch 1 (8.8 GiB on SDXL)
        if self.memory == "low":
            vae.enable_tiling()
            if self.base.device.type == "cuda":
                self.pipe.enable_model_cpu_offload(device=self.base.device)
        log.info("generation memory mode: %s", self.memory)

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
        source: Image.Image | None = None,
    ) -> GenerationResult:
        """Run one request (valid: it was checked when made); `pet`/`lora` as resolved from storage (None for the plain base).

        A variation request needs its `source` picture; the result keeps the source's size.
        """
        if request.is_variation and source is None:
            raise ValueError("a variation needs its source image")
        pipe = self.pipe
        prepared = prepare_prompts(request.prompt, request.negative_prompt, pet, [pipe.tokenizer, pipe.tokenizer_2])
        first_seed = request.seed if request.seed is not None else draw_seed()
        seeds = [first_seed + index for index in range(request.count)]
        width, height = source.size if request.is_variation else self.output_size(request)
        callback = None
        if on_step is not None:
            total = request.denoising_steps  # a variation skips the start of the schedule

            def callback(_pipe: StableDiffusionXLPipeline, index: int, _t: object, tensors: dict) -> dict:
                latents = tensors["latents"]
                on_step(index + 1, total, lambda: preview_image(latents))
                return {}

        interval = self.recipe.interval_for(request.guidance, pipe)
        started = time.perf_counter()
        with self._lock, torch.no_grad():
            training_paused = has_adapters(pipe)  # a training between its steps keeps its adapter on the UNet
            compiled = self._runs_compiled((request.count, width, height), training_paused)
            with self._unet_for_pictures(training_paused):
                self._encoders_on_device()
                if lora is not None and request.lora_scale > 0:
                    applied = self.loras.applied(lora.key, lora.path, request.lora_scale)
                else:
                    applied = nullcontext()  # strength 0 is exactly the base model, not a 0-scaled LoRA
                running = self.variation_pipe if request.is_variation else pipe
                in_interval = interval.applied(pipe.unet, running.scheduler) if interval else nullcontext()
                with self._compiled_blocks(unet=compiled, decoder=compiled):
                    with applied, self._graphs_if_usable(training_paused, compiled), in_interval:
                        if request.is_variation:
                            latents = self._vary(prepared, request, seeds, self._encode(source), callback)
                        else:
                            latents = self._denoise(prepared, request, seeds, width, height, callback)
                    images = self._decode(latents)
        return GenerationResult(
            images=images,
            seeds=seeds,
            prompt=prepared.prompt,
            negative_prompt=prepared.negative_prompt,
            width=width,
            height=height,
            sampler=self.recipe.sampler,
            warnings=prepared.warnings,
            seconds=time.perf_counter() - started,
            denoising_strength=request.variation_strength if request.is_variation else None,
            guidance_interval=interval,
        )

    def render(
        self, job: Render, *, adapter: str | None = None, blocks: CompiledBlocks | None = None, keep_graphs: bool = False,
    ) -> list[Image.Image]:
        """Pictures from embeddings (renders.py) painted with `/imagine`'s recipe (recipe.py): with a
        paused training's `adapter` merged into the weights as a pet's LoRA is (a validation round:
        its picture for a prompt and seed is what `/imagine` paints with that checkpoint, prompt and
        seed), or with the plain base model (class images).

        Replayed from the UNet's graphs; compiled where the shape was compiled ahead and no
        adapter is on the UNet, or in `blocks`, a training's compiled blocks, whose validation
        variants were compiled with its step (engine/gpu/training/compile_ahead.py); decoded by the
        compiled VAE decoder where a request of this size compiled it. With an adapter on, the
        graphs go after the last picture (the training wants their memory back) unless
        `keep_graphs`: then the next round replays them rather than warm up and capture again
        (0.2 s a round on an H200), and the caller releases them (`release_graphs`) when done.
        """
        pipe, recipe = self.pipe, self.recipe
        interval = recipe.interval_for(recipe.guidance, pipe)
        decoder = self._compiled_decoder(job.size, training_compiled=blocks is not None)
        pictures: list[Image.Image] = []
        with self._lock, torch.no_grad():
            adapters = has_adapters(pipe)
            try:
                with self._unet_for_pictures(adapters), merged_adapter(pipe, adapter) if adapter else nullcontext():
                    for prompts, negative, seeds in job.parts():
                        compiled = blocks is not None or self._runs_compiled((len(seeds), job.size, job.size), adapters)
                        unet_blocks = blocks.active() if blocks is not None else self._compiled_blocks(unet=compiled, decoder=False)
                        in_interval = interval.applied(pipe.unet, pipe.scheduler) if interval else nullcontext()
                        with unet_blocks, self._graphs_if_usable(False, compiled), in_interval:
                            latents = pipe(
                                prompt_embeds=prompts.embeds,
                                pooled_prompt_embeds=prompts.pooled,
                                negative_prompt_embeds=negative.embeds,
                                negative_pooled_prompt_embeds=negative.pooled,
                                # One CPU generator per picture, as `/imagine` seeds each of its images.
                                generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
                                num_inference_steps=recipe.steps,
                                guidance_scale=recipe.guidance,
                                height=job.size,
                                width=job.size,
                                output_type="latent",
                            ).images
                        with decoder.active() if decoder is not None else nullcontext():
                            pictures += self._decode(latents)
            finally:
                if adapters and not keep_graphs:
                    self.release_graphs()
        return pictures

    @contextmanager
    def _unet_for_pictures(self, training_paused: bool) -> Iterator[None]:
        """The UNet in eval mode, a paused training's adapter switched off (it must not leak into a
        picture, and a validation round merges it instead), and the adapters' state, grads and
        modes put back afterwards."""
        with preserved_adapter_state(self.pipe) if training_paused else nullcontext():
            if training_paused:
                self.pipe.disable_lora()
            if self.pipe.unet.training:
                self.pipe.unet.eval()
            yield

    def _runs_compiled(self, shape: tuple[int, int, int], training_paused: bool) -> bool:
        """Whether this request runs the compiled blocks: only if its shape was compiled ahead (else
        the shape is queued for `compile_ahead` and the request runs eagerly rather than wait)."""
        if self.ahead is None or training_paused:  # a paused training's layers are not what was compiled
            return False
        if shape not in self.ahead.ready:
            self.ahead.want(shape)
            return False
        return True

    @contextmanager
    def _compiled_blocks(self, *, unet: bool, decoder: bool) -> Iterator[None]:
        """Inside, the UNet's and the VAE decoder's blocks run compiled as asked (both compiled ahead)."""
        with ExitStack() as stack:
            if unet:
                assert self.ahead is not None
                stack.enter_context(self.ahead.unet_blocks.active())
            if decoder:
                assert self.ahead is not None
                stack.enter_context(self.ahead.decoder_blocks.active())
            yield

    def _compiled_decoder(self, size: int, training_compiled: bool) -> CompiledBlocks | None:
        """The VAE decoder's blocks if compiled for square pictures of this size: by a compiled training's
        plan (engine/gpu/training/compile_ahead.py), or by a request of that size (any count: the VAE
        decodes one picture at a time)."""
        if training_compiled:
            return compiled_blocks(self.pipe.vae.decoder)
        if self.ahead is not None and self.ahead.decodes_compiled(size, size):
            return self.ahead.decoder_blocks
        return None

    @contextmanager
    def _graphs_if_usable(self, training_paused: bool, compiled: bool) -> Iterator[None]:
        """The UNet's and the text encoders' graphs, if this generator uses them (the UNet's kept
        apart for compiled and eager blocks, which launch different kernels).

        A training paused between its steps leaves its LoRA layers on the UNet, switched off for
        the generation: a graph captured then runs the base layers only, exactly as they compute
        at that moment. Its memory goes back to the training right after the picture.
        """
        if self.unet_graphs is None or self.text_graphs is None:
            yield
            return
        try:
            with self.unet_graphs.serving(release_after=training_paused, compiled=compiled), self.text_graphs.serving():
                yield
        finally:
            if training_paused:
                self.text_graphs.release()

    def _encoders_on_device(self) -> None:
        """Bring the text encoders back if a lean-mode training parked them on the CPU.

        A generation served between two training steps finds them there; the training puts
        them back on the CPU itself when it resumes. (In low-memory mode the pipeline's
        offload hooks move every module, so nothing to do.)
        """
        if self.memory == "low":
            return
        wanted = self.base.device
        for encoder in (self.pipe.text_encoder, self.pipe.text_encoder_2):
            if encoder is None:
                continue
            where = encoder.device  # "cuda:0" where the setting may say "cuda": compare type and index
            if where.type != wanted.type or (wanted.index is not None and where.index != wanted.index):
                encoder.to(wanted)

    def _denoise(
        self, prepared: PreparedPrompt, request: GenerationRequest, seeds: list[int], width: int, height: int,
        callback: Callable[..., dict] | None,
    ) -> torch.Tensor:
        """The pipeline's denoising loop, stopping at latents (the decode is ours: see `_decode`)."""
        return self.pipe(width=width, height=height, **_pipeline_arguments(prepared, request, seeds, callback)).images

    def _vary(
        self, prepared: PreparedPrompt, request: GenerationRequest, seeds: list[int], source_latents: torch.Tensor,
        callback: Callable[..., dict] | None,
    ) -> torch.Tensor:
        """img2img from the source's latents: each image's own seed noises them to `strength`, then denoises."""
        return self.variation_pipe(
            image=source_latents,  # 4 channels: used as the starting latents, not encoded again
            strength=request.variation_strength,
            **_pipeline_arguments(prepared, request, seeds, callback),
        ).images

    def _latent_scale(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """(mean, std / scaling_factor): scaled latents = (raw - mean) / that std, as the pipelines iterate on."""
        config = self.pipe.vae.config
        if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
            mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(device, dtype)
            std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(device, dtype)
            return mean, std / config.scaling_factor
        return 0.0, 1.0 / config.scaling_factor

    def _encode(self, source: Image.Image) -> torch.Tensor:
        """The source picture as scaled latents: the VAE's mean, once for the whole batch.

        Ours rather than the img2img pipeline's: that one encodes once per image and, for VAEs
        that ask for it, casts the shared VAE to float32 and back to the prompt's dtype.
        """
        pixels = self.variation_pipe.image_processor.preprocess(source.convert("RGB")).to(self.base.device)
        raw = self._in_vae_precision(lambda vae, dtype: vae.encode(pixels.to(dtype)).latent_dist.mode())
        mean, std = self._latent_scale(raw.device, raw.dtype)
        return (raw - mean) / std

    def _decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """VAE decode in the model's half precision (float32 after an overflow: see `_in_vae_precision`)."""
        mean, std = self._latent_scale(latents.device, latents.dtype)
        latents = latents * std + mean
        pixels = self._in_vae_precision(lambda vae, dtype: vae.decode(latents.to(dtype), return_dict=False)[0])
        # diffusers' postprocess in its order (denormalise in the VAE's dtype, float, x255, round),
        # but to bytes on the GPU: a quarter of the transfer and no numpy pass over floats.
        rgb = ((pixels / 2 + 0.5).clamp(0, 1).float() * 255).round().to(torch.uint8)
        return [Image.fromarray(array) for array in rgb.permute(0, 2, 3, 1).contiguous().cpu().numpy()]

    def _in_vae_precision(self, run: Callable[[torch.nn.Module, torch.dtype], torch.Tensor]) -> torch.Tensor:
        """`run(vae, dtype)` in the VAE's precision; on overflow (NaN: a black image) again in float32."""
        vae = self.pipe.vae
        vae_dtype = next(vae.post_quant_conv.parameters()).dtype
        out = run(vae, vae_dtype)
        if not torch.isfinite(out).all():
            # The original SDXL VAE overflows in fp16; fp32 from now on costs ~2x VAE time.
            log.warning("the VAE overflowed in %s; running it in float32 from now on", vae_dtype)
            vae.to(torch.float32)
            out = run(vae, torch.float32)
        return out


def _pipeline_arguments(
    prepared: PreparedPrompt, request: GenerationRequest, seeds: list[int], callback: Callable[..., dict] | None
) -> dict[str, Any]:
    """What a picture and its variation ask of their diffusers pipeline alike: latents out, a step callback."""
    return dict(
        prompt=prepared.prompt,
        negative_prompt=prepared.negative_prompt or None,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        num_images_per_prompt=request.count,
        # One CPU generator per image: image i is reproducible from seed + i alone.
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
        output_type="latent",
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents"],
    )
