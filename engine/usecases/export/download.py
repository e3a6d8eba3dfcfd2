"""`/lora`'s engine part: a pet's A1111/ComfyUI file, made once and kept beside its checkpoint, and
the words around it, shared by the bot and the command line."""

from __future__ import annotations

import asyncio
import shlex
from dataclasses import dataclass
from pathlib import Path

from engine.usecases.export.choice import Chosen, find_checkpoint
from engine.usecases.export.kohya_file import download_metadata, fp16_file
from engine.usecases.export.naming import download_filename, lora_stem, trigger_words
from storage.db import Queries
from storage.files import FileMissing, FileStore
from storage.pets import LOCAL_GUILD, Pet
from storage.photos import count_photos

DOWNLOAD_FILE = "download-fp16.safetensors"  # in the checkpoint's folder: deleted with it


@dataclass(frozen=True)
class Download:
    path: Path  # a local copy of the file
    filename: str  # the name to give it: '<pet>-<token>-step<N>.safetensors'
    size: int  # bytes
    step: int
    trigger: str  # the trigger words, e.g. 'qzxvk cat'


async def prepare_download(
    db: Queries, store: FileStore, pet: Pet, step: int | None = None, *, base_model: str
) -> Download:
    """The fp16 kohya file of the pet's checkpoint at `step` (default: the one it paints with).

    ExportError says in plain words when there is none; `base_model` is PAWTRAIT_MODEL, named in the file.
    """
    return await download_of(db, store, await find_checkpoint(db, pet, step), base_model)


async def download_of(db: Queries, store: FileStore, chosen: Chosen, base_model: str) -> Download:
    """The file of a chosen checkpoint: made and stored beside it on the first call, read back after."""
    key = f"{chosen.checkpoint.path}/{DOWNLOAD_FILE}"
    try:
        path = await store.local_path(key)
    except FileMissing:
        source = await store.local_path(chosen.checkpoint.kohya_key)
        metadata = download_metadata(chosen, base_model, await count_photos(db, chosen.pet.id))
        await store.put_bytes(key, await asyncio.to_thread(fp16_file, source, metadata))
        path = await store.local_path(key)
    step = chosen.checkpoint.step
    return Download(path, download_filename(chosen.pet, step), path.stat().st_size, step, trigger_words(chosen.pet))


def download_caption(pet: Pet, download: Download) -> str:
    """What to do with the file, for the message it is attached to."""
    return (
        f"{pet.name}'s LoRA from step {download.step}, for AUTOMATIC1111, ComfyUI and other SDXL tools: put "
        f"{download.filename} into models/Lora and write `{download.trigger}` in the prompt, e.g. "
        f"`{pet.instance_prompt} <lora:{lora_stem(pet, download.step)}:1>` in AUTOMATIC1111."
    )


def export_command(pet: Pet, step: int) -> str:
    """The operator's command that writes this LoRA, its model card and images into a folder."""
    guild = "" if pet.guild_id == LOCAL_GUILD else f" --guild {pet.guild_id}"
    return f"pawtrait export {shlex.quote(pet.name)} --step {step}{guild} --out DIR"


def too_big_message(pet: Pet, download: Download, limit: int) -> str:
    """Why the file is not attached (`limit`: the upload limit in bytes) and how the operator gets it."""
    return (
        f"{pet.name}'s LoRA from step {download.step} is {_megabytes(download.size)}, more than the "
        f"{_megabytes(limit)} I may upload here. Whoever runs this bot can write it, with a model card and the "
        f"validation images, into a folder:\n`{export_command(pet, download.step)}`"
    )


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f}".removesuffix(".0") + " MB"
