"""The optimizer loop: a peft LoRA on the resident SDXL UNet, trained on cached latents.

Speed comes from three choices (measured in docs/BENCHMARKS.md):
- no VAE or text encoder in the loop (see cache.py);
- all images of an optimizer step go through the UNet as ONE micro-batch when memory
  allows: SDXL has no batch-coupled layers, so a batch of 4 gives the same gradient as 4
  accumulated batches of 1, with a quarter of the kernel launches;
- no host syncs in the hot loop: the photo order is planned up front on the device, the
  noise comes from a device generator seeded from (seed, step), and the loss is read back
  only when progress is reported;
- on CUDA the forward/backward is captured once as a CUDA graph and replayed every step:
  the host no longer launches the UNet's ~10,000 kernels one by one (see cuda_graphs.py);
- clipping and the optimizer work on one flat copy of the LoRA's 1,120 tensors: on an H200
  clipping and 8-bit AdamW over them one by one took 53 ms a step, 51 ms of it host time,
  against 0.4 ms flat (docs/BENCHMARKS.md).
Seeding the noise from (seed, step) also makes a resumed run identical to an
uninterrupted one without replaying any random stream.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

from engine.gpu.compile import CompiledBlocks
from engine.gpu.cuda_graphs import CapturedCall, graphs_supported, on_side_stream
from engine.gpu.device import free_memory_bytes
from engine.gpu.models import BaseModel
from engine.gpu.training.cache import TrainingCache
from engine.gpu.training.optimizer import build_optimizer
from engine.usecases.training.hooks import ProgressInfo
from engine.usecases.training.params import TrainingParams
from engine.usecases.training.prompts import validation_prompt_count

log = logging.getLogger(__name__)

GIB = 2**30
# Activation memory per 1024² image in bf16 (scaled by pixel count for other sizes), from the
# H100 measurements in docs/BENCHMARKS.md, used to pick the mode from free memory.
FAST_GIB_PER_IMAGE = 7.5  # no gradient checkpointing: 35.4 GiB peak for 4 images, 64.4 GiB for 8
LEAN_MICRO_BATCH = 4  # with checkpointing: 7.8 GiB peak for 4 images (6.5 GiB for 2, but twice as slow)
# With checkpointing, what a micro-batch adds to the weights (H100, docs/BENCHMARKS.md: 7.84 GiB
# peak for 4 images, 6.5 GiB for 2, of which 4.9 GiB are the UNet and the VAE): an 8 GB card has
# room for one image at a time, and halving the micro-batch keeps the step's gradient.
LEAN_GIB_PER_IMAGE = 0.67
LEAN_GIB_FIXED = 0.22
LEAN_HEADROOM_GIB = 1.0  # the step's capture, cuBLAS workspaces, fragmentation
HEADROOM_GIB = 4.5  # validation renders and generations beside the captured step, allocator fragmentation
# Eager steps before the forward/backward is captured: lazy initialisation (cuBLAS, cuDNN,
# autocast) must happen before a capture. They are real training steps, not thrown away.
GRAPH_WARMUP_STEPS = 2
# cuBLAS multiplies operands that are not 16-byte aligned with slower Ampere-era kernels, and a
# rank-4 factor's rows are 8 bytes in bf16: on an H200 those products took 32 ms of a compiled
# fast-mode step of 198 ms, which trained at rank 8 in 189 ms (docs/BENCHMARKS.md). So the adapter
# trains at the rank rounded up to a multiple of 8, the extra rows of A and columns of B zero: they
# get zero gradients and zero updates (AdamW's decay of 0 included), so the LoRA learnt is exactly
# of the asked rank, and it is saved at that rank.
ALIGNED_RANK = 8
# How a checkpoint's optimizer state is laid out: one flat tensor of the LoRA at `trained_rank`
# (checkpoints without it hold per-tensor moments, which a resume cannot use).
OPTIMIZER_LAYOUT = "flat"
# Every run trains an adapter of this one name: compiled code guards on adapter names (peft's
# layers look their factors up by name), so code compiled for one run fits the next without
# recompiling. (Not "training": that is an attribute of every torch module.)
TRAINING_ADAPTER = "pet-training"


@dataclass(frozen=True)
class LoopPlan:
    """How this run uses memory: decided once, before the loop."""

    mode: str  # 'fast' or 'lean'
    gradient_checkpointing: bool
    micro_batch: int  # images per forward/backward
    offload_encoders: bool
    reason: str

    def render_batch(self, pictures: int) -> int:
        """Validation pictures per pipeline call: a whole round in fast mode, one at a time in lean."""
        return pictures if self.mode == "fast" else 1


def plan_memory(params: TrainingParams, base: BaseModel, free_bytes: int | None, encoder_bytes: int = 0) -> LoopPlan:
    """Fast (no gradient checkpointing, whole step in one micro-batch) when free memory allows, else
    lean, in the biggest micro-batch (4, 2 or 1) that fits beside the weights.

    `free_bytes`: free with the UNet and the VAE on the device; `encoder_bytes`: what the text
    encoders hold there, which lean mode moves to the CPU (see `memory_for_training`). An
    explicit mode, micro-batch or gradient-checkpointing choice in `params` wins.
    """
    images = params.unet_images_per_step
    scale = (params.resolution / 1024) ** 2
    if params.mode != "auto":
        mode, reason = params.mode, f"{params.mode} mode requested"
    elif free_bytes is None:
        mode, reason = "fast", "no GPU memory limit (CPU)"
    else:
        need = FAST_GIB_PER_IMAGE * scale * images + HEADROOM_GIB
        free = free_bytes / GIB
        mode = "fast" if free >= need else "lean"
        reason = f"{free:.1f} GiB free, fast mode needs about {need:.1f} GiB"
    checkpointing = params.gradient_checkpointing if params.gradient_checkpointing is not None else mode == "lean"
    micro = params.micro_batch or (images if mode == "fast" else min(LEAN_MICRO_BATCH, images))
    if mode == "lean" and params.micro_batch is None and free_bytes is not None:
        room = (free_bytes + encoder_bytes) / GIB
        while micro > 1 and (LEAN_GIB_FIXED + micro * LEAN_GIB_PER_IMAGE) * scale + LEAN_HEADROOM_GIB > room:
            micro //= 2
    return LoopPlan(
        mode=mode,
        gradient_checkpointing=checkpointing,
        micro_batch=min(micro, images),
        offload_encoders=mode == "lean" and base.device.type == "cuda",
        reason=reason,
    )


def memory_for_training(base: BaseModel) -> tuple[int | None, int]:
    """(free bytes once the UNet and the VAE are on the device, bytes the text encoders hold there).

    A generator in low-memory mode (an 8 GB card) keeps every module on the CPU between pictures
    and its offload hooks bring each over when it runs: the loop's first forward brings the 4.8 GiB
    UNet, which the free memory seen before it must not count as room for activations.
    """
    free = free_memory_bytes(base.device)
    if free is None:
        return None, 0
    pipe = base.pipe
    coming = sum(_bytes(module, base.device, here=False) for module in (pipe.unet, pipe.vae))
    encoders = sum(_bytes(module, base.device, here=True) for module in (pipe.text_encoder, pipe.text_encoder_2))
    return free - coming, encoders


def _bytes(module: torch.nn.Module | None, device: torch.device, here: bool) -> int:
    """Bytes of the module's parameters and buffers on `device`'s type (here) or elsewhere."""
    if module is None:
        return 0
    tensors = itertools.chain(module.parameters(), module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors if (t.device.type == device.type) == here)


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 1) % (2**63)


def photo_order(count: int, per_step: int, steps: int, seed: int, flip: bool) -> torch.Tensor:
    """[steps, per_step] indices into the cached latents: every photo once per epoch, shuffled per epoch.

    With flips, each draw picks the original (i) or its flipped copy (count + i) at random.
    """
    needed = steps * per_step
    order: list[torch.Tensor] = []
    epoch = 0
    while sum(len(part) for part in order) < needed:
        generator = torch.Generator().manual_seed(_step_seed(seed, 10_000_000 + epoch))
        part = torch.randperm(count, generator=generator)
        if flip:
            part = part + count * torch.randint(0, 2, (count,), generator=generator)
        order.append(part)
        epoch += 1
    return torch.cat(order)[:needed].view(steps, per_step)


def validation_unet_batches(params: TrainingParams, plan: LoopPlan) -> tuple[int, int]:
    """The UNet's batches in a validation round: its pictures per call twice over (the negative and
    the prompt, inside the guidance interval), and once (the prompt alone, outside it)."""
    pictures = plan.render_batch(validation_prompt_count(params.validation_prompts))
    return 2 * pictures, pictures


def plan_key(params: TrainingParams, plan: LoopPlan) -> tuple[object, ...]:
    """What a run's compiled code depends on: the shapes of its micro-batches and validation
    rounds, its adapter's layers and how the UNet runs them (training/compile_ahead.py)."""
    return (params.resolution, params.rank, params.target_modules, plan.micro_batch, plan.gradient_checkpointing,
            params.unet_images_per_step, validation_unet_batches(params, plan))


class LoraTrainer:
    """A LoRA adapter on `base.pipe.unet` with its optimizer, trained one optimizer step at a time.

    `compiled`: the UNet's blocks to run compiled in the steps (compiled ahead in the worker's
    idle time: training/compile_ahead.py), or None for eager blocks.
    """

    def __init__(
        self, base: BaseModel, params: TrainingParams, cache: TrainingCache, plan: LoopPlan,
        compiled: CompiledBlocks | None = None,
    ) -> None:
        self.base, self.params, self.cache, self.plan = base, params, cache, plan
        self.unet = base.pipe.unet
        self.device = base.device
        self.autocast = base.device.type == "cuda" and base.dtype != torch.float32

        # What the checkpoints say; the adapter on the UNet is `trained_rank` wide (see ALIGNED_RANK),
        # with peft's scale alpha / rank kept.
        self.lora_config = LoraConfig(
            r=params.rank, lora_alpha=params.lora_alpha, init_lora_weights="gaussian",
            target_modules=list(params.target_modules),
        )
        self.trained_rank = -(-params.rank // ALIGNED_RANK) * ALIGNED_RANK
        widened = LoraConfig(
            r=self.trained_rank, lora_alpha=params.lora_alpha * self.trained_rank / params.rank,
            init_lora_weights="gaussian", target_modules=list(params.target_modules),
        )
        self.unet.add_adapter(widened, adapter_name=TRAINING_ADAPTER)
        marker = f".{TRAINING_ADAPTER}."
        self.lora_params = [p for name, p in self.unet.named_parameters() if marker in name]
        self.lora_layers = [m for m in self.unet.modules() if isinstance(m, BaseTunerLayer)]
        for p in self.lora_params:
            p.data = p.data.float()  # the base stays in half precision; the trained weights in fp32
        self._initialise(params)
        # What the optimizer updates: the LoRA's tensors end to end in one, with one flat gradient
        # gathered from theirs; the updated values are copied back into the layers after each step.
        # (Copies rather than views: a generation in low memory mode moves the UNet to the CPU and
        # back, which gives every layer tensor new memory. The UNet may be on the CPU right now.)
        self.master = torch.nn.Parameter(_flat([p.detach() for p in self.lora_params]).to(self.device),
                                         requires_grad=False)
        self.master.grad = torch.zeros_like(self.master)
        self._master_views = [view.view(p.shape) for view, p in
                              zip(self.master.detach().split([p.numel() for p in self.lora_params]), self.lora_params)]
        self.activate()
        self.compiled = compiled

        self.optimizer = build_optimizer(params, [self.master], self.device)
        self.lr_scheduler = get_scheduler(
            params.lr_scheduler, self.optimizer, num_warmup_steps=params.lr_warmup_steps, num_training_steps=params.steps
        )
        self.scaler = torch.amp.GradScaler("cuda") if base.dtype == torch.float16 else None

        schedule = DDPMScheduler.from_config(base.pipe.scheduler.config)
        alphas_cumprod = schedule.alphas_cumprod.to(self.device, torch.float32)
        self.num_timesteps = len(alphas_cumprod)
        self.sqrt_alpha = alphas_cumprod.sqrt()
        self.sqrt_sigma = (1 - alphas_cumprod).sqrt()
        self.snr = alphas_cumprod / (1 - alphas_cumprod)
        self.v_prediction = schedule.config.prediction_type == "v_prediction"

        per_step = params.images_per_step
        self.order = photo_order(cache.photos, per_step, params.steps, params.seed, params.flip).to(self.device)
        if cache.class_latents is not None:
            self.class_order = photo_order(len(cache.class_latents), per_step, params.steps, params.seed + 1, False)
            self.class_order = self.class_order.to(self.device)
        self._conditioning(per_step)
        self.generator = torch.Generator(self.device)
        self.completed_steps = 0
        # fp16 too: the graph scales the loss by the scaler's scale tensor, read at every replay, so
        # the scale the scaler updates between steps applies; unscaling, the inf check (one host sync
        # per step) and the optimizer step stay outside the graph, as they do for bf16.
        self.graphed = params.cuda_graphs and graphs_supported(self.device)
        self._captured: CapturedCall | None = None
        self._eager_steps = 0

    def _initialise(self, params: TrainingParams) -> None:
        """peft's gaussian init at the asked rank, from the run's seed: A's first `rank` rows with
        standard deviation 1 / rank, the widening rows zero (peft starts B at zero)."""
        torch.manual_seed(params.seed)
        with torch.no_grad():
            for layer in self.lora_layers:
                if TRAINING_ADAPTER not in layer.lora_A:
                    continue
                down = layer.lora_A[TRAINING_ADAPTER].weight
                down.zero_()
                down[: params.rank].normal_(std=1 / params.rank)

    def _conditioning(self, per_step: int) -> None:
        """The per-sample text conditioning and loss weights, the same at every step."""
        cache, dtype = self.cache, self.base.dtype
        embeds = [cache.instance.embeds.expand(per_step, -1, -1)]
        pooled = [cache.instance.pooled.expand(per_step, -1)]
        weights = [torch.full((per_step,), 1.0 / per_step)]
        if cache.class_latents is not None and cache.class_prompt is not None:
            embeds.append(cache.class_prompt.embeds.expand(per_step, -1, -1))
            pooled.append(cache.class_prompt.pooled.expand(per_step, -1))
            weights.append(torch.full((per_step,), self.params.prior_loss_weight / per_step))
        self.embeds = torch.cat(embeds).to(self.device, dtype).contiguous()
        self.pooled = torch.cat(pooled).to(self.device, dtype).contiguous()
        self.sample_weight = torch.cat(weights).to(self.device)
        self.time_ids = cache.time_ids.to(self.device, dtype).expand(len(self.embeds), -1).contiguous()

    def activate(self) -> None:
        """(Re-)make this adapter the trained one, after pictures were painted between steps: they
        restore the adapters' state, but not as one shared list of active adapters, which compiled
        code guards on (a run whose layers each held their own list recompiled every block)."""
        if next(self.unet.parameters()).device.type != self.device.type:
            # A picture painted in low-memory mode (an 8 GB card) left the UNet on the CPU: its
            # offload hook would bring it back inside the step's capture, where copies from
            # pageable memory fail (the capture then fell back to eager steps).
            self.unet.to(self.device)
        self.unet.enable_adapters()
        self.unet.set_adapter(TRAINING_ADAPTER)
        for p in self.lora_params:
            p.requires_grad_(True)
        self.unet.train()
        if self.plan.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing(_checkpoint_without_rng)
        else:
            self.unet.disable_gradient_checkpointing()

    def train_step(self, step: int) -> torch.Tensor:
        """One optimizer step (0-based `step`); returns the loss as a device tensor (no host sync)."""
        latents = self.cache.latents[self.order[step]]
        if self.cache.class_latents is not None:
            latents = torch.cat([latents, self.cache.class_latents[self.class_order[step]]])
        self.generator.manual_seed(_step_seed(self.params.seed, step))
        noise = torch.randn(latents.shape, generator=self.generator, device=self.device)
        t = torch.randint(0, self.num_timesteps, (len(latents),), generator=self.generator, device=self.device)
        a = self.sqrt_alpha[t].view(-1, 1, 1, 1)
        s = self.sqrt_sigma[t].view(-1, 1, 1, 1)
        noisy = (a * latents + s * noise).to(self.base.dtype)
        target = a * noise - s * latents if self.v_prediction else noise
        weight = self.sample_weight * self._snr_weight(t)

        with self.lora_inputs_uncast():
            total = self._gradients(noisy, t, target, weight)

        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.params.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([self.master], self.params.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.lr_scheduler.step()
        with torch.no_grad():
            torch._foreach_copy_(self.lora_params, self._master_views)
        return total

    def _gradients(
        self, noisy: torch.Tensor, t: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        """The step's gradients into the LoRA's .grad; returns the loss. Eager, or replayed from a CUDA graph."""
        if not self.graphed:
            return self._forward_backward(noisy, t, target, weight)
        if self._captured is None:
            if self._eager_steps < GRAPH_WARMUP_STEPS:
                self._eager_steps += 1
                return on_side_stream(self._forward_backward, noisy, t, target, weight)
            # The layers hold no .grad tensors here (each step's are gathered, then dropped), so the
            # captured backward writes fresh gradients into graph-owned tensors at every replay.
            try:
                self._captured = CapturedCall(self._forward_backward, (noisy, t, target, weight))
            except Exception:  # a capture that fails must not fail the training: eager from now on
                log.exception("capturing the training step as a CUDA graph failed; training without CUDA graphs")
                self.graphed = False
            if not self.graphed:
                # Out of the except block, whose traceback held the failed capture's tensors.
                self._drop_gradients()
                torch.cuda.empty_cache()
                return self._forward_backward(noisy, t, target, weight)
            log.info("training step captured as a CUDA graph")
        return self._captured(noisy, t, target, weight).clone()

    def make_room(self) -> None:
        """Called before other GPU work between steps (validation, a served generation).

        A captured step keeps its activations' memory reserved. Fast mode's plan leaves room
        for other work beside it; lean mode must fit small cards, so it gives the memory back
        and captures again at the next step (about one eager step's host time).
        """
        if self._captured is not None and self.plan.mode == "lean":
            self.release_graph()

    def release_graph(self) -> None:
        self._captured = None

    @contextmanager
    def lora_inputs_uncast(self) -> Iterator[None]:
        """How a step runs the LoRA layers. Under autocast peft's cast of every LoRA input to fp32 is a
        wasted copy (autocast casts it back for the matmul): off for the whole step, forward and
        backward (checkpoint recomputes must match)."""
        for layer in self.lora_layers:
            layer.cast_input_dtype_enabled = not self.autocast
        try:
            yield
        finally:
            for layer in self.lora_layers:
                layer.cast_input_dtype_enabled = True

    def precision(self) -> torch.autocast:
        """The forward's autocast. No autocast cache: cached casts would outlive a CUDA graph capture
        (PyTorch's graph rules)."""
        return torch.autocast(self.device.type, dtype=self.base.dtype, enabled=self.autocast, cache_enabled=False)

    def _forward_backward(
        self, noisy: torch.Tensor, t: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        """Accumulate the step's gradient in micro-batches of plan.micro_batch images; returns the loss."""
        total = torch.zeros((), device=self.device)
        with self.compiled.active() if self.compiled else nullcontext():  # also for checkpointing's recompute
            for start in range(0, len(noisy), self.plan.micro_batch):
                part = slice(start, start + self.plan.micro_batch)
                with self.precision():
                    prediction = self.unet(
                        noisy[part],
                        t[part],
                        encoder_hidden_states=self.embeds[part],
                        added_cond_kwargs={"text_embeds": self.pooled[part], "time_ids": self.time_ids[part]},
                        return_dict=False,
                    )[0]
                mse = F.mse_loss(prediction.float(), target[part], reduction="none").mean(dim=(1, 2, 3))
                loss = (mse * weight[part]).sum()
                (self.scaler.scale(loss) if self.scaler else loss).backward()
                total += loss.detach()
        _flat([p.grad for p in self.lora_params], out=self.master.grad)
        self._drop_gradients()
        return total

    def _drop_gradients(self) -> None:
        """The layers' own .grad tensors, once gathered into the flat one: the next backward starts fresh."""
        for p in self.lora_params:
            p.grad = None

    def _snr_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma: down-weight the easy, low-noise timesteps (Hang et al. 2023)."""
        if self.params.snr_gamma <= 0:
            return torch.ones_like(t, dtype=torch.float32)
        snr = self.snr[t]
        clipped = torch.clamp(snr, max=self.params.snr_gamma)
        return clipped / (snr + 1) if self.v_prediction else clipped / snr

    @property
    def learning_rate(self) -> float:
        return float(self.lr_scheduler.get_last_lr()[0])

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter's weights at the asked rank in peft naming (without the adapter name), fp32
        copies on the CPU."""
        state = get_peft_model_state_dict(self.unet, adapter_name=TRAINING_ADAPTER)
        return {key: _at_rank(key, value, self.params.rank).detach().to("cpu", torch.float32, copy=True)
                for key, value in state.items()}

    def state_dict(self, step: int, lora: dict[str, torch.Tensor]) -> dict:
        """Everything a resume needs besides the cache (which is rebuilt from the photos)."""
        return {
            "step": step,
            "lora": lora,
            "optimizer": self.optimizer.state_dict(),
            "optimizer_layout": OPTIMIZER_LAYOUT,
            "trained_rank": self.trained_rank,  # the shapes of the optimizer's moments
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> int:
        """Restore a checkpoint's training state; returns its step."""
        widened = {key: _at_rank(key, value, self.trained_rank) for key, value in state["lora"].items()}
        result = set_peft_model_state_dict(self.unet, widened, adapter_name=TRAINING_ADAPTER)
        if result.unexpected_keys:
            raise RuntimeError(f"the checkpoint does not match this LoRA: unexpected keys {result.unexpected_keys[:3]}")
        with torch.no_grad():
            self.master.copy_(_flat([p.detach() for p in self.lora_params]))
        if state.get("optimizer_layout") == OPTIMIZER_LAYOUT and state.get("trained_rank") == self.trained_rank:
            self.optimizer.load_state_dict(state["optimizer"])
        else:  # saved by an older version: moments per tensor, or at the asked rank
            log.warning("the checkpoint's optimizer moments were saved in an older layout; they start again from zero")
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        return int(state["step"])

    def close(self) -> None:
        """Remove the adapter and leave the UNet as generation expects it (eval, no checkpointing).

        With no adapter left, peft's wrapper layers go too: idle, they still cost every
        generation per-layer Python (docs/BENCHMARKS.md).
        """
        self.release_graph()
        self.unet.delete_adapters(TRAINING_ADAPTER)
        if not getattr(self.unet, "peft_config", None):
            self.unet.unload_lora()
        self.unet.disable_gradient_checkpointing()
        self.unet.eval()


def _flat(tensors: list[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
    """The tensors end to end in one flat tensor (written into `out` if given), in the LoRA's order."""
    return torch.cat([tensor.reshape(-1) for tensor in tensors], out=out)


def _at_rank(key: str, factor: torch.Tensor, rank: int) -> torch.Tensor:
    """A LoRA factor cut or zero-padded to `rank` (A's rows, B's columns)."""
    dim = 0 if "lora_A" in key else 1 if "lora_B" in key else None
    if dim is None or factor.shape[dim] == rank:
        return factor
    if factor.shape[dim] > rank:
        return factor.narrow(dim, 0, rank)
    padding = list(factor.shape)
    padding[dim] = rank - factor.shape[dim]
    return torch.cat([factor, factor.new_zeros(padding)], dim=dim)


def _checkpoint_without_rng(module: torch.nn.Module, *args: object) -> object:
    """Gradient checkpointing without saving the RNG state around each recompute.

    SDXL's UNet draws no random numbers, and reading the CUDA RNG state is not allowed
    while a CUDA graph is being captured.
    """
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False, preserve_rng_state=False)


class Cancelled(Exception):
    """Raised out of `run_loop` when `should_cancel` said so at a step boundary."""

    def __init__(self, step: int) -> None:
        super().__init__(f"cancelled at step {step}")
        self.step = step


@dataclass
class LoopCallbacks:
    """What the loop reports to and asks of its caller, all called in the training thread."""

    save_checkpoint: Callable[[int], None]
    validate: Callable[[int], None]
    on_progress: Callable[[ProgressInfo], None] = lambda info: None
    should_cancel: Callable[[], bool] = lambda: False
    # Called at every step boundary with `make_room`, which it must call before using the GPU;
    # returns whether it did (the adapter is then activated again: 22 ms of host time a step on
    # the tiny model on a CPU, docs/BENCHMARKS.md, wasted when nothing was painted).
    between_steps: Callable[[Callable[[], None]], bool] | None = None
    report_every_s: float = 1.0


def validates_at(params: TrainingParams, step: int) -> bool:
    """Whether a run has a validation round after `step` completed steps (0: before it trains)."""
    return step in (0, params.steps) or (params.validate_every > 0 and step % params.validate_every == 0)


def run_loop(trainer: LoraTrainer, start_step: int, callbacks: LoopCallbacks, validate_first: bool) -> int:
    """Train from `start_step` to params.steps with checkpoints and validation; returns the last step.

    `step` counts completed optimizer steps. Cancellation is checked before every step;
    validation runs with checkpoints, and first if `validate_first` (a fresh run's round before
    it trains, or a resumed run's round that was not stored in full).
    """
    params = trainer.params
    total = params.steps
    step = trainer.completed_steps = start_step
    if validate_first and not callbacks.should_cancel():
        callbacks.validate(step)  # before any capture: nothing to make room for
        trainer.activate()
    train_time = 0.0  # seconds in train_step only, for the ETA
    trained = 0
    last_report = time.monotonic()
    while step < total:
        if callbacks.should_cancel():
            raise Cancelled(step)
        if callbacks.between_steps is not None and callbacks.between_steps(trainer.make_room):
            trainer.activate()
        started = time.monotonic()
        loss = trainer.train_step(step)
        step += 1
        trained += 1
        trainer.completed_steps = step
        checkpoint = step % params.checkpoint_every == 0 or step == total
        validate = validates_at(params, step)
        report = time.monotonic() - last_report >= callbacks.report_every_s or checkpoint or validate
        loss_value = float(loss) if report else 0.0  # the one host sync, at most once per report
        train_time += time.monotonic() - started
        if report:
            per_step = train_time / trained
            callbacks.on_progress(
                ProgressInfo(
                    step=step,
                    total=total,
                    loss=loss_value,
                    lr=trainer.learning_rate,
                    images_per_s=params.images_per_step / per_step if per_step > 0 else 0.0,
                    eta_s=per_step * (total - step),
                )
            )
            last_report = time.monotonic()
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"the loss became {loss_value} at step {step}; try a lower learning rate"
                )
        if checkpoint:
            callbacks.save_checkpoint(step)
        if validate:
            trainer.make_room()
            callbacks.validate(step)
            trainer.activate()
    return step
