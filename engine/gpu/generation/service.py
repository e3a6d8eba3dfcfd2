"""One generation end to end: resolve the pet and its LoRA, paint, save PNGs, record the row.

This is what the GPU worker and `pawtrait imagine` call. Everything a user can get wrong
is checked before the GPU is touched; the painting runs in a thread so the event loop
(job heartbeats, progress events) keeps going. The LoRA and a variation's source picture
come from the file store (fetched once per host and kept in its cache); the finished PNGs
go to it under a new folder before the row that lists them is written.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from engine.gpu.generation.generator import GenerationResult, Generator, PetLora, StepCallback
from engine.usecases.generation.checkpoint_choice import checkpoint_to_paint
from engine.usecases.generation.metadata import Parameters, png_info
from engine.usecases.generation.request import GenerationError, GenerationRequest
from engine.usecases.jobs.generate import GenerateResult
from engine.usecases.pet_prompts import substitute_token
from storage import keys
from storage.db import Queries
from storage.files import DataDir, FileMissing, FileStore, remove_tree
from storage.generations import (
    CheckpointRef,
    VariationSource,
    generation_image_key,
    record_generation,
)
from storage.pets import Pet, get_pet


@dataclass
class GenerationOutcome:
    generation_id: int
    files: list[str]  # file-store keys, one PNG per image
    seeds: list[int]
    warnings: list[str] = field(default_factory=list)
    flagged: list[bool] | None = None  # the safety check's verdict per picture; None when unscreened

    def to_result(self) -> GenerateResult:
        """The result a generate job stores (its contract: engine.usecases.jobs.generate)."""
        return GenerateResult(self.generation_id, tuple(self.files), tuple(self.seeds), tuple(self.warnings),
                              None if self.flagged is None else tuple(self.flagged))


# The safety check of finished pictures (engine.gpu.safety.screening.Screening.flags): True per
# flagged picture, None when screening is off.
Screen = Callable[[Sequence[Image.Image]], list[bool] | None]


async def resolve_pet(
    db: Queries, request: GenerationRequest, guild_id: str
) -> tuple[Pet | None, CheckpointRef | None]:
    """The request's pet (it must be in this guild) and the checkpoint to paint it with."""
    if request.pet_id is None:
        substitute_token(request.prompt, None)  # raises when the prompt has TOK but no pet
        return None, None
    pet = await get_pet(db, request.pet_id)
    if pet is None or pet.guild_id != guild_id:
        raise GenerationError(f"There is no pet #{request.pet_id} in this server; check the pet's name.")
    return pet, await checkpoint_to_paint(db, pet, request.checkpoint_id)


async def fetch_lora(store: FileStore, pet: Pet, checkpoint: CheckpointRef) -> PetLora:
    """A local copy of the checkpoint's LoRA file (cached on this host after its first use)."""
    try:
        return PetLora(checkpoint.key, await store.local_path(checkpoint.key))
    except FileMissing:
        raise GenerationError(
            f"The LoRA file of {pet.name}'s checkpoint #{checkpoint.id} is missing; choose another checkpoint or train again."
        ) from None


async def load_source(
    db: Queries, store: FileStore, request: GenerationRequest, guild_id: str
) -> Image.Image | None:
    """The picture a variation starts from (an earlier generation of this guild), or None."""
    if not request.is_variation:
        return None
    generation_id, number = request.source_generation_id, request.source_image
    key = await generation_image_key(db, generation_id, number, guild_id)
    if key is None:
        raise GenerationError(
            f"There is no image {number} of generation #{generation_id} in this server; "
            "make a variation of an image that is still here."
        )
    try:
        return await asyncio.to_thread(open_rgb, await store.local_path(key))
    except (OSError, UnidentifiedImageError):
        raise GenerationError(
            f"Image {number} of generation #{generation_id} was deleted or damaged, so it cannot be varied."
        ) from None


def open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def image_parameters(
    result: GenerationResult, index: int, request: GenerationRequest, generator: Generator,
    pet: Pet | None, checkpoint: CheckpointRef | None,
) -> Parameters:
    settings: dict[str, object] = {
        "Steps": request.steps,
        "Sampler": result.sampler,
        "CFG scale": f"{request.guidance:g}",
        "Seed": result.seeds[index],
        "Size": f"{result.width}x{result.height}",
        "Model": Path(generator.base.model_id).name,
    }
    if result.guidance_interval is not None:
        settings["Guidance interval"] = f"sigma {result.guidance_interval}"
    if generator.base.vae_id:
        settings["VAE"] = Path(generator.base.vae_id).name
    if pet is not None and checkpoint is not None:
        settings["Lora"] = f"{pet.name} ({pet.token})"
        settings["Lora strength"] = f"{request.lora_scale:g}"
        settings["Checkpoint"] = f"{checkpoint.id} (run {checkpoint.run_id}, step {checkpoint.step})"
    if result.denoising_strength is not None:
        # A1111 writes "Denoising strength" for img2img; the source says which picture was varied.
        settings["Denoising strength"] = f"{result.denoising_strength:g}"
        settings["Variation of"] = f"generation {request.source_generation_id} image {request.source_image}"
    settings["Version"] = "pawtrait"
    return Parameters(prompt=result.prompt, negative_prompt=result.negative_prompt,
                      settings={key: str(value) for key, value in settings.items()})


async def generate_and_record(
    db: Queries,
    store: FileStore,
    data: DataDir,
    generator: Generator,
    request: GenerationRequest,
    guild_id: str,
    requested_by: str,
    on_step: StepCallback | None = None,
    screen: Screen | None = None,
) -> GenerationOutcome:
    """Paint `request` for `guild_id`, put the PNGs in the file store and record the row.

    Raises `GenerationError` (plain words for the user) before any GPU work when the request's
    pet or source picture cannot be painted (the request itself was checked when it was made). `on_step(step, total, preview)` runs in the
    generation thread. With `screen`, the pictures' verdicts go into the row and the outcome,
    so whoever posts them decides per picture.
    """
    pet, checkpoint = await resolve_pet(db, request, guild_id)
    source = await load_source(db, store, request, guild_id)
    lora = await fetch_lora(store, pet, checkpoint) if pet is not None and checkpoint is not None else None
    result = await asyncio.to_thread(generator.generate, request, pet, lora, on_step, source)
    flagged = await asyncio.to_thread(screen, result.images) if screen is not None else None
    variation = (
        VariationSource(request.source_generation_id, request.source_image, request.variation_strength)
        if request.source_generation_id is not None
        else None
    )
    staged = data.tmp_dir() / f"generation-{uuid.uuid4().hex}"
    try:
        await asyncio.to_thread(_write_pngs, staged, result, request, generator, pet, checkpoint)
        files = await store.put_tree(keys.generation_folder(keys.new_tag()), staged, move=True)
    finally:
        remove_tree(staged)
    try:
        generation = await record_generation(
            db, files, guild_id=guild_id, pet_id=pet.id if pet else None,
            checkpoint_id=checkpoint.id if checkpoint else None, prompt=request.prompt,
            negative_prompt=request.negative_prompt, seed=result.seeds[0], steps=request.steps,
            guidance=request.guidance, width=result.width, height=result.height,
            lora_scale=request.lora_scale, requested_by=requested_by, variation=variation, flagged=flagged,
        )
    except BaseException:
        await store.delete(files)  # no row lists them: they would only be orphans
        raise
    return GenerationOutcome(generation.id, generation.files, result.seeds, result.warnings, flagged)


def _write_pngs(
    folder: Path, result: GenerationResult, request: GenerationRequest, generator: Generator,
    pet: Pet | None, checkpoint: CheckpointRef | None,
) -> None:
    folder.mkdir(parents=True)
    for index, (image, seed) in enumerate(zip(result.images, result.seeds)):
        info = png_info(image_parameters(result, index, request, generator, pet, checkpoint))
        image.save(folder / f"{index + 1}-seed-{seed}.png", format="PNG", pnginfo=info)
