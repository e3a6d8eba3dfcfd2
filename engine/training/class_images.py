"""Prior-preservation images: what the base model draws for 'a photo of <class noun>'.

They are drawn once per class into the file store (class-images/<slug>/0000.png, ...,
image i from seed i) and shared by every pet of that class, on every host, so the second
cat owner does not pay for them again; a run that wants more than exist draws only the rest.

Two hosts training cats at the same moment must not both draw them: the drawing host holds
the named lease 'class-images:<slug>' (renewed after every image, expiring on the database's
clock if that host dies) and the other waits for it, then finds the images there.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import torch
from PIL import Image

from engine.models import BaseModel
from engine.training.cache import restore_encoders
from engine.training.prompts import class_prompt
from engine.training.validation import decode_latents
from storage import keys, leases
from storage.db import Queries
from storage.files import FileStore

log = logging.getLogger(__name__)

# One image takes 0.6-3.3 s on a GPU (docs/BENCHMARKS.md): a lease of a minute, renewed after
# every image, outlives any single image and frees the class within a minute of a crash.
LEASE_S = 60.0
WAIT_S = 2.0


class ClassImagesCancelled(Exception):
    """The run was cancelled (or lost its job) while waiting for or drawing class images."""


async def ensure_class_images(
    db: Queries,
    store: FileStore,
    base: BaseModel,
    class_noun: str,
    count: int,
    resolution: int,
    *,
    steps: int = 25,
    guidance: float = 5.0,
    should_stop: Callable[[], Awaitable[bool]],
    on_image: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Local copies of the class's first `count` images, drawing (once, on one host) the missing ones.

    `on_image(done, missing)` reports drawing progress; `await should_stop()` ends the wait or
    the drawing with ClassImagesCancelled.
    """
    wanted = [keys.class_image(class_noun, index) for index in range(count)]
    lease = f"class-images:{keys.slugify(class_noun)}"
    holder = f"{socket.gethostname()}:{os.getpid()}:{keys.new_tag()}"
    while True:
        present = {item.key for item in await store.list(keys.class_images(class_noun))}
        missing = [index for index, key in enumerate(wanted) if key not in present]
        if not missing:
            break
        if await should_stop():
            raise ClassImagesCancelled()
        if not await leases.try_acquire(db, lease, holder, LEASE_S):
            await asyncio.sleep(WAIT_S)  # another worker is drawing this class: use its images
            continue
        try:
            await _draw(db, store, base, class_noun, missing, resolution, steps, guidance, lease, holder,
                        should_stop, on_image)
        finally:
            await leases.release(db, lease, holder)
    return [await store.local_path(key) for key in wanted]


async def _draw(
    db: Queries,
    store: FileStore,
    base: BaseModel,
    class_noun: str,
    missing: list[int],
    resolution: int,
    steps: int,
    guidance: float,
    lease: str,
    holder: str,
    should_stop: Callable[[], Awaitable[bool]],
    on_image: Callable[[int, int], None] | None,
) -> None:
    log.info("drawing %d class images for %r", len(missing), class_noun)
    for done, index in enumerate(missing, start=1):
        if await should_stop():
            raise ClassImagesCancelled()
        png = await asyncio.to_thread(draw_class_image, base, class_noun, index, resolution, steps, guidance)
        await store.put_bytes(keys.class_image(class_noun, index), png)
        if on_image is not None:
            on_image(done, len(missing))
        if not await leases.renew(db, lease, holder, LEASE_S):
            return  # we stalled past the lease and another worker took over: it draws the rest


@torch.no_grad()
def draw_class_image(base: BaseModel, class_noun: str, index: int, resolution: int, steps: int, guidance: float) -> bytes:
    """Image `index` of the class (from seed `index`) with the plain base model, as PNG bytes.

    Any LoRA adapters on the UNet are switched off while drawing: the prior is the base
    model's idea of the class.
    """
    restore_encoders(base)
    unet = base.pipe.unet
    had_adapters = bool(getattr(unet, "peft_config", None))
    if had_adapters:
        unet.disable_adapters()
    try:
        latents = base.pipe(
            prompt=[class_prompt(class_noun)],
            generator=[torch.Generator("cpu").manual_seed(index)],
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=resolution,
            width=resolution,
            output_type="latent",
        ).images
        pixels, _ = decode_latents(base, latents)
        image: Image.Image = base.pipe.image_processor.postprocess(pixels, output_type="pil")[0]
    finally:
        if had_adapters:
            unet.enable_adapters()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
