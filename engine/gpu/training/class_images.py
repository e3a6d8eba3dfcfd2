"""Prior-preservation images: what the base model draws for 'a photo of <class noun>'.

They are drawn once per class into the file store (class-images/<slug>/0000.png, ...,
image i from seed i; the slug is storage.keys.class_slug) and shared by every pet of that
class, on every host, so the second cat owner does not pay for them again; a run that
wants more than exist draws only the rest.

Two hosts training cats at the same moment must not both draw them: the drawing host holds
the named lease 'class-images:<slug>' (renewed after every batch, expiring on the database's
clock if that host dies) and the other waits for it, then finds the images there.

They are painted by the worker's `Generator` with `/imagine`'s recipe (engine/gpu/generation/recipe.py),
several per pipeline call and compiled where its count-4 shape is: 3.3 s an image when each was
its own eager pipeline call (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from engine.gpu.generation.generator import Generator
from engine.gpu.generation.renders import Render
from engine.gpu.training.cache import encode_prompts, no_negative, restore_encoders
from engine.usecases.training.prompts import class_prompt
from storage import keys, leases
from storage.db import Queries
from storage.files import FileStore

log = logging.getLogger(__name__)

# A batch takes seconds on a GPU (docs/BENCHMARKS.md): a lease of a minute, renewed after every
# batch, outlives any single batch and frees the class within a minute of a crash.
LEASE_S = 60.0
WAIT_S = 2.0
# Images per pipeline call: the Generator's full batch, whose shape it compiles ahead. In its
# low-memory mode (small cards) one at a time.
BATCH = 4


class ClassImagesCancelled(Exception):
    """The run was cancelled (or lost its job) while waiting for or drawing class images."""


async def ensure_class_images(
    db: Queries,
    store: FileStore,
    generator: Generator,
    class_noun: str,
    count: int,
    resolution: int,
    *,
    should_stop: Callable[[], Awaitable[bool]],
    on_image: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Local copies of the class's first `count` images, drawing (once, on one host) the missing ones.

    `on_image(done, missing)` reports drawing progress; `await should_stop()` ends the wait or
    the drawing with ClassImagesCancelled.
    """
    wanted = [keys.class_image(class_noun, index) for index in range(count)]
    lease = f"class-images:{keys.class_slug(class_noun)}"
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
            await _draw(db, store, generator, class_noun, missing, resolution, lease, holder, should_stop, on_image)
        finally:
            await leases.release(db, lease, holder)
    return [await store.local_path(key) for key in wanted]


async def _draw(
    db: Queries,
    store: FileStore,
    generator: Generator,
    class_noun: str,
    missing: list[int],
    resolution: int,
    lease: str,
    holder: str,
    should_stop: Callable[[], Awaitable[bool]],
    on_image: Callable[[int, int], None] | None,
) -> None:
    log.info("drawing %d class images for %r", len(missing), class_noun)
    batch = BATCH if generator.memory == "full" else 1
    done = 0
    for start in range(0, len(missing), batch):
        if await should_stop():
            raise ClassImagesCancelled()
        indices = missing[start : start + batch]
        pngs = await asyncio.to_thread(draw_class_images, generator, class_noun, indices, resolution)
        for index, png in zip(indices, pngs, strict=True):
            await store.put_bytes(keys.class_image(class_noun, index), png)
            done += 1
            if on_image is not None:
                on_image(done, len(missing))
        if not await leases.renew(db, lease, holder, LEASE_S):
            return  # we stalled past the lease and another worker took over: it draws the rest


def draw_class_images(generator: Generator, class_noun: str, indices: list[int], resolution: int) -> list[bytes]:
    """Images `indices` of the class (image i from seed i) by the plain base model, as PNG bytes.

    Any LoRA adapter on the UNet is switched off while drawing: the prior is the base model's
    idea of the class.
    """
    base = generator.base
    restore_encoders(base)
    prompts = encode_prompts(base, [class_prompt(class_noun)])
    prompts = prompts[[0] * len(indices)]
    job = Render(prompts, no_negative(base, prompts), indices, resolution, batch=len(indices))
    pngs = []
    for image in generator.render(job):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs
