"""Where each kind of file lives in the file store: keys relative to the data folder (or the
bucket's prefix), built from database ids and random tags, never from text users typed.

Objects are written once: a key that may be written again by a retried job (a checkpoint, a
validation image, a generation's pictures) carries a fresh random tag, so a frozen worker
that wakes up after its job moved elsewhere can never overwrite what the new worker wrote,
and a cached copy of a key never goes stale.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata


def slugify(text: str, fallback: str = "x") -> str:
    """A lowercase ASCII slug safe as one path component ('Maine Coon' -> 'maine-coon')."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:48].strip("-")
    return slug or fallback


def new_tag() -> str:
    return secrets.token_hex(4)


def parent(key: str) -> str:
    return key.rpartition("/")[0]


def pet_prefix(pet_id: int) -> str:
    return f"pets/{pet_id}"


def photo(pet_id: int, name: str) -> str:
    return f"{pet_prefix(pet_id)}/photos/{name}"


def contact_sheets(pet_id: int) -> str:
    """The folder of a pet's contact sheet (one file, named by its content)."""
    return f"{pet_prefix(pet_id)}/sheet"


def run_prefix(run_id: int) -> str:
    return f"runs/{run_id}"


def checkpoint(run_id: int, step: int, tag: str) -> str:
    return f"{run_prefix(run_id)}/checkpoints/step-{step}-{tag}"


def validation_image(run_id: int, step: int, index: int, tag: str) -> str:
    return f"{run_prefix(run_id)}/validation/step-{step:05d}-{index}-{tag}.png"


def generation_folder(tag: str) -> str:
    return f"generations/{tag}"


def class_slug(class_noun: str) -> str:
    """The class's path-safe name: the folder of its images and the name of the lease to draw them.

    A noun in Latin letters keeps its slug ('Maine Coon' -> 'maine-coon'), as installations
    already store class images under it. A noun the slug cannot spell ('猫' and '犬' both slug
    to 'x') adds a hash of the noun after '_', which a slug never contains, so each class
    gets a folder of its own and no dog learns its prior from cats.
    """
    slug = slugify(class_noun)
    decomposed = unicodedata.normalize("NFKD", class_noun)
    if all(char.isascii() or unicodedata.combining(char) for char in decomposed):
        return slug
    normalised = " ".join(unicodedata.normalize("NFKC", class_noun).casefold().split())
    return f"{slug}_{hashlib.sha256(normalised.encode()).hexdigest()[:12]}"


def class_images(class_noun: str) -> str:
    return f"class-images/{class_slug(class_noun)}"


def class_image(class_noun: str, index: int) -> str:
    return f"{class_images(class_noun)}/{index:04d}.png"


TMP = "tmp"


def preview(job_id: int, step: int) -> str:
    return f"{TMP}/previews/job{job_id}-step{step}-{new_tag()}.png"
