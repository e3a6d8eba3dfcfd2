"""The LoRA's optimizer: bitsandbytes' 8-bit AdamW on CUDA (the seed's choice), else torch's AdamW."""

from __future__ import annotations

import functools
import logging

import torch

from engine.usecases.training.params import TrainingParams

log = logging.getLogger(__name__)


def build_optimizer(params: TrainingParams, trainable: list[torch.nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    kwargs = dict(lr=params.learning_rate, betas=(0.9, 0.999), weight_decay=1e-4, eps=1e-8)
    if params.optimizer == "adamw8bit":
        if device.type == "cuda":
            return _adamw8bit_class()(trainable, **kwargs)
        log.warning("8-bit AdamW needs bitsandbytes on a CUDA GPU; using plain AdamW on %s", device.type)
    return torch.optim.AdamW(trainable, fused=device.type == "cuda", **kwargs)


@functools.cache
def _adamw8bit_class() -> type:
    """bitsandbytes' AdamW8bit, minus its device-wide sync after every tensor's update.

    bitsandbytes synchronises the GPU after each parameter (its paged optimizers need that;
    this one is not paged). Over a rank-4 SDXL LoRA's 1,120 tensors those syncs took 65 ms of a
    0.33 s step on the H100; the trainer now updates one flat tensor (loop.py), and even its one
    sync would make the host wait for each step to finish before queuing the next. The update
    itself is bitsandbytes' own (`update_step`).
    (Built on first use: importing bitsandbytes on a machine without CUDA only warns.)
    """
    import bitsandbytes as bnb

    class AdamW8bit(bnb.optim.AdamW8bit):
        @torch.no_grad()
        def step(self, closure=None):  # untyped: torch's Optimizer.step signature
            if self.is_paged:
                return super().step(closure)
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            if not self.initialized:
                self.check_overrides()
                self.to_gpu()
                self.initialized = True
            for gindex, group in enumerate(self.param_groups):
                for pindex, param in enumerate(group["params"]):
                    if param.grad is None:
                        continue
                    if not self.state[param]:
                        self.init_state(group, param, gindex, pindex)
                    self.update_step(group, param, gindex, pindex)
            return loss

    return AdamW8bit
