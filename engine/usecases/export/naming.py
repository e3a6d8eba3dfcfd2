"""The names a LoRA travels under: its trigger words, its file name and its base model's name."""

from __future__ import annotations

from pathlib import Path

from storage.keys import slugify
from storage.pets import Pet


def trigger_words(pet: Pet) -> str:
    """What a prompt must say to paint the pet: its token with its class noun ('qzxvk cat')."""
    return f"{pet.token} {pet.class_noun}"


def lora_stem(pet: Pet, step: int) -> str:
    """'thor-qzxvk-step300': the pet's name for people, its token to tell two Thors apart."""
    return f"{slugify(pet.name, fallback='pet')}-{pet.token}-step{step}"


def download_filename(pet: Pet, step: int) -> str:
    return f"{lora_stem(pet, step)}.safetensors"


def base_model_name(model: str) -> str:
    """A hub id as it is; a local folder by its own name (its path means nothing elsewhere), as sd-scripts does."""
    return Path(model).name if Path(model).exists() else model
