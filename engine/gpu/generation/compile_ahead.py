"""Compiling the generator's blocks for a request shape before any request waits for it: `CompileAhead`.

Compiling SDXL's blocks for one request shape took 176 s on a fresh H100 machine (33 s from
inductor's disk cache): far too long to hold somebody's `/imagine`. So requests of a shape
not compiled yet run eagerly (still replayed from CUDA graphs, ~1.2 s a picture), and the
worker compiles wanted shapes in its idle time, one block variant per `step()`: a request
that arrives meanwhile waits for one block's compile at most, never for the whole model.

A request shape is (images, width, height). It fixes the UNet's two batches (the negative and
the prompt together inside the guidance interval, the prompt alone outside it) and the VAE
decoder's input (one image at a time: the VAE decodes in slices). Compiled code is recorded
for the VAE's precision at the time: after a VAE overflow switches it to float32 (rare with the
fp16-safe VAE), the decoder's float32 variants compile during the next picture of each shape.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline

from engine.gpu.compile import BlockCall, CompiledBlocks, compiled_blocks

log = logging.getLogger(__name__)

Shape = tuple[int, int, int]  # (images, width, height)


class CompileAhead:
    """Which request shapes have compiled blocks, and the work left to compile the wanted ones."""

    def __init__(self, pipe: StableDiffusionXLPipeline, backend: str | Callable[..., Any] = "inductor") -> None:
        self.pipe = pipe
        self.unet_blocks = compiled_blocks(pipe.unet, backend)
        self.decoder_blocks = compiled_blocks(pipe.vae.decoder, backend)
        self.ready: set[Shape] = set()
        self._wanted: deque[Shape] = deque()
        self._compiling: Shape | None = None
        self._left: list[tuple[CompiledBlocks, BlockCall]] = []

    def want(self, shape: Shape) -> None:
        """Queue `shape` for compiling (a no-op if it is compiled or queued already)."""
        if shape not in self.ready and shape != self._compiling and shape not in self._wanted:
            self._wanted.append(shape)

    @property
    def pending(self) -> bool:
        return bool(self._left or self._wanted)

    def decodes_compiled(self, width: int, height: int) -> bool:
        """Whether the VAE decoder is compiled for pictures of this size: a compiled shape of any count
        compiled it (the VAE decodes one picture at a time)."""
        return any((shape_width, shape_height) == (width, height) for _, shape_width, shape_height in self.ready)

    def step(self) -> bool:
        """Do one piece of the work: record the next shape's block calls, or compile one of them.

        Returns False when nothing was left to do. Call with gradients off, the UNet in eval
        mode and no adapters on it, as a request runs it, so the compiled code fits requests.
        """
        if not self._left:
            if not self._wanted:
                return False
            self._compiling = self._wanted.popleft()
            self._left = self._record(self._compiling)
            log.info("compiling %d block variants for %d image(s) at %dx%d", len(self._left), *self._compiling)
            return True
        blocks, call = self._left.pop(0)
        blocks.compile_call(call)
        if not self._left:
            assert self._compiling is not None
            self.ready.add(self._compiling)
            log.info("compiled for %d image(s) at %dx%d: requests of that shape now run compiled", *self._compiling)
            self._compiling = None
        return True

    def _record(self, shape: Shape) -> list[tuple[CompiledBlocks, BlockCall]]:
        """One eager UNet call per batch the shape runs and one VAE decode, keeping each distinct block call."""
        count, width, height = shape
        unet, vae = self.pipe.unet, self.pipe.vae
        latent_size = (height // self.pipe.vae_scale_factor, width // self.pipe.vae_scale_factor)

        def unet_call(batch: int) -> Callable[[], object]:
            return lambda: unet(**blank_unet_inputs(self.pipe, batch, latent_size), return_dict=False)

        vae_dtype = next(vae.post_quant_conv.parameters()).dtype
        latents = torch.zeros(1, vae.config.latent_channels, *latent_size, device=vae.device, dtype=vae_dtype)
        calls = [(self.unet_blocks, call) for batch in (2 * count, count) for call in self.unet_blocks.record(unet_call(batch))]
        calls += [(self.decoder_blocks, call) for call in self.decoder_blocks.record(lambda: vae.decode(latents))]
        return calls


def blank_unet_inputs(pipe: StableDiffusionXLPipeline, batch: int, latent_size: tuple[int, int]) -> dict[str, Any]:
    """Zeros of the shapes and dtypes a denoising step feeds SDXL's UNet, as its keyword arguments."""
    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    tokens = pipe.tokenizer.model_max_length
    return {
        "sample": torch.zeros(batch, unet.config.in_channels, *latent_size, device=device, dtype=dtype),
        "timestep": torch.tensor(999, device=device),
        "encoder_hidden_states": torch.zeros(batch, tokens, unet.config.cross_attention_dim, device=device, dtype=dtype),
        "added_cond_kwargs": {
            "text_embeds": torch.zeros(batch, pooled, device=device, dtype=dtype),
            "time_ids": torch.zeros(batch, 6, device=device, dtype=dtype),  # sizes and crop: 3 pairs
        },
    }
