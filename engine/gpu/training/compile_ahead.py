"""Compiling the training step before a training needs it: `TrainingCompileAhead`.

Compiled blocks make a fast-mode step 23 % faster on an H200 (0.200 s against 0.259 s, with
CUDA graphs either way) and take 9 GiB less, but compiling them for a training took 83 s
(docs/BENCHMARKS.md): a training that compiled on first use made its owner wait that long,
so compile was off. Now the worker compiles in its idle time, as it does for pictures
(engine/gpu/generation/compile_ahead.py), one block variant per `step()`: a rehearsal trainer on
synthetic latents (with the one adapter name every run uses, so the code fits every run)
records one eager step's block calls, a validation round's UNet calls and its VAE decode, then
each variant is compiled on its own (the step's forward and backward). A run whose plan is
compiled runs its steps and its validation rounds compiled, their decode too; any other trains
eagerly (still from CUDA graphs) and has its plan queued for the next idle time: nobody waits.

A plan compiled to the end is written in the compile cache's record (training/compiled_plans.py).
`pawtrait train` has no idle time: it waits for a plan that record lists (compiled from the
cache: 13 s on an H100 in R2, 21 s on an H200 in T9) and trains any other uncompiled.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from engine.gpu.compile import BlockCall, CompiledBlocks, compiled_blocks
from engine.gpu.generation.compile_ahead import blank_unet_inputs
from engine.gpu.generation.renders import PromptEmbeddings
from engine.gpu.models import BaseModel
from engine.gpu.training.cache import TrainingCache
from engine.gpu.training.compiled_plans import CompiledPlans
from engine.gpu.training.loop import (
    LoopPlan,
    LoraTrainer,
    memory_for_training,
    plan_key,
    plan_memory,
    validation_unet_batches,
)
from engine.usecases.training.params import TrainingParams

log = logging.getLogger(__name__)

SYNTHETIC_PHOTOS = 4  # what the rehearsal "trains" on: any latents of the run's size will do


class TrainingCompileAhead:
    """Which training plans have compiled blocks, and the work left to compile the wanted ones.

    Call `step()` only while no job runs on the UNet, and `pause()` before one does: between
    steps the rehearsal's adapter stays on the UNet.

    `record`: where finished plans are written down. `wait_for_recorded`: a run whose plan the
    record lists is compiled before it starts (a process without idle time: `pawtrait train`).
    """

    def __init__(
        self, base: BaseModel, backend: str | Callable[..., Any] = "inductor",
        record: CompiledPlans | None = None, wait_for_recorded: bool = False,
    ) -> None:
        self.base = base
        self.record = record
        self.wait_for_recorded = wait_for_recorded
        self.blocks = compiled_blocks(base.pipe.unet, backend)
        self.decoder = compiled_blocks(base.pipe.vae.decoder, backend)  # shared with the Generator's
        self.ready: set[tuple[object, ...]] = set()
        self._wanted: deque[tuple[TrainingParams, LoopPlan]] = deque()
        self._trainer: LoraTrainer | None = None
        self._left: list[tuple[CompiledBlocks, BlockCall, bool]] = []  # (blocks, call, whether a training step's)

    def want(self, params: TrainingParams, plan: LoopPlan | None = None) -> None:
        """Queue a run's plan (by default the one `params` get with the memory free now)."""
        plan = plan or plan_memory(params, self.base, *memory_for_training(self.base))
        key = plan_key(params, plan)
        if key not in self.ready and key not in {plan_key(*wanted) for wanted in self._wanted}:
            self._wanted.append((params, plan))

    def compiled_for(self, params: TrainingParams, plan: LoopPlan) -> CompiledBlocks | None:
        """The blocks to run compiled in a run with this plan, or None (then the plan is queued).
        With `wait_for_recorded`, a recorded plan is compiled first, here and now."""
        key = plan_key(params, plan)
        if key not in self.ready and self.wait_for_recorded and self.record is not None and self.record.has(key):
            log.info("a worker compiled this training's plan here: compiling it from the cache before the first step")
            self.compile_now(params, plan)
        if key in self.ready:
            return self.blocks
        self.want(params, plan)
        return None

    def compile_now(self, params: TrainingParams, plan: LoopPlan) -> None:
        """Compile this plan to the end before anything else wanted (the caller waits)."""
        key = plan_key(params, plan)
        self.pause()
        self._wanted = deque(wanted for wanted in self._wanted if plan_key(*wanted) != key)
        self._wanted.appendleft((params, plan))
        while key not in self.ready:
            self.step()

    @property
    def pending(self) -> bool:
        return bool(self._wanted)

    def step(self) -> bool:
        """Do one piece of the work: record the next plan's block calls, or compile one of them.
        Returns False when nothing was left to do."""
        if not self._wanted:
            return False
        params, plan = self._wanted[0]
        if self._trainer is None:
            self._trainer, self._left = self._record(params, plan)
            log.info("compiling %d training block variants for %s", len(self._left), plan_key(params, plan))
            return True
        if self._left:
            blocks, call, training = self._left.pop(0)
            if training:
                with self._trainer.lora_inputs_uncast(), self._trainer.precision():
                    blocks.compile_call(call, backward=True)
            else:
                with painting(self._trainer):
                    blocks.compile_call(call)
            return True
        self.pause()
        self._wanted.popleft()
        key = plan_key(params, plan)
        self.ready.add(key)
        if self.record is not None:
            self.record.add(key)
        log.info("compiled the training step for %s: trainings with that plan now run compiled", key)
        return True

    def pause(self) -> None:
        """Take the rehearsal's adapter off the UNet (a job is about to use it). The variants
        compiled so far stay compiled; the next `step()` records again."""
        if self._trainer is not None:
            self._trainer.close()
            self._trainer, self._left = None, []
            if self.base.device.type == "cuda":
                torch.cuda.empty_cache()

    def _record(
        self, params: TrainingParams, plan: LoopPlan,
    ) -> tuple[LoraTrainer, list[tuple[CompiledBlocks, BlockCall, bool]]]:
        """A rehearsal trainer, eager, and the distinct block calls of one of its steps, of its
        validation round's denoising steps and of a round's decode."""
        rehearsal = dataclasses.replace(params, cuda_graphs=False, steps=1)
        trainer = LoraTrainer(self.base, rehearsal, synthetic_cache(self.base, params), plan)
        try:
            calls = [(self.blocks, call, True) for call in self.blocks.record(lambda: trainer.train_step(0))]
            calls += [(self.blocks, call, False)
                      for call in self.blocks.record(lambda: validation_unet_calls(trainer, params, plan))]
            calls += [(self.decoder, call, False) for call in self.decoder.record(lambda: validation_decode(self.base, params))]
        except BaseException:
            trainer.close()
            raise
        return trainer, calls


@contextmanager
def painting(trainer: LoraTrainer) -> Iterator[None]:
    """The UNet as a validation round runs it between training steps: no gradients, eval mode, the
    adapter switched off (the round merges it into the weights: Generator.render); the trained
    adapter made active again after."""
    trainer.unet.disable_lora()
    trainer.unet.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        trainer.activate()


def validation_unet_calls(trainer: LoraTrainer, params: TrainingParams, plan: LoopPlan) -> None:
    """A UNet call of each batch a validation round's pipeline runs (`/imagine`'s recipe: guided
    steps and steps outside the guidance interval), through the LoRA layers switched off."""
    pipe = trainer.base.pipe
    side = params.resolution // pipe.vae_scale_factor
    with painting(trainer):
        for batch in validation_unet_batches(params, plan):
            pipe.unet(**blank_unet_inputs(pipe, batch, (side, side)), return_dict=False)


def validation_decode(base: BaseModel, params: TrainingParams) -> None:
    """A validation picture's VAE decode (one picture at a time: the VAE decodes in slices)."""
    vae = base.pipe.vae
    side = params.resolution // base.pipe.vae_scale_factor
    dtype = next(vae.post_quant_conv.parameters()).dtype
    with torch.no_grad():
        vae.decode(torch.zeros(1, vae.config.latent_channels, side, side, device=vae.device, dtype=dtype))


def synthetic_cache(base: BaseModel, params: TrainingParams) -> TrainingCache:
    """Zero latents and embeddings of the sizes a run with `params` trains on."""
    side = params.resolution // base.pipe.vae_scale_factor
    blank = blank_unet_inputs(base.pipe, 1, (side, side))
    latents = torch.zeros(SYNTHETIC_PHOTOS, *blank["sample"].shape[1:], device=base.device)  # fp32, as cached
    prompt = PromptEmbeddings(blank["encoder_hidden_states"], blank["added_cond_kwargs"]["text_embeds"])
    res = params.resolution
    cache = TrainingCache(latents=latents, photos=SYNTHETIC_PHOTOS, instance=prompt,
                          time_ids=torch.tensor([[res, res, 0, 0, res, res]], device=base.device))
    if params.prior_preservation:
        cache.class_latents, cache.class_prompt = latents.clone(), prompt
    return cache
