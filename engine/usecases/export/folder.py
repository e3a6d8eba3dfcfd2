"""`pawtrait export`'s engine part: a folder someone can load, read and publish as it is: the LoRA,
the validation images of its step and of step 0, and the model card."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.usecases.export import FORMATS
from engine.usecases.export.choice import find_checkpoint
from engine.usecases.export.download import download_of
from engine.usecases.export.model_card import SCORE_LABELS, CardFacts, CardImage, model_card
from engine.usecases.export.naming import base_model_name, trigger_words
from storage import runs
from storage.db import Queries
from storage.files import FileStore
from storage.pets import Pet

CARD_FILE = "README.md"
IMAGES_FOLDER = "images"


@dataclass(frozen=True)
class Exported:
    lora: Path
    card: Path
    images: list[Path]
    step: int
    trigger: str


async def export_lora(
    db: Queries,
    store: FileStore,
    pet: Pet,
    out: Path,
    *,
    base_model: str,
    vae: str | None = None,
    step: int | None = None,
    fmt: str = "kohya",
    scores: dict[int, dict[str, float]] | None = None,
) -> Exported:
    """Write the checkpoint at `step` (default: the one the pet paints with) into `out`.

    kohya: the fp16 A1111/ComfyUI file; diffusers: `pytorch_lora_weights.safetensors` as stored, for
    `pipeline.load_lora_weights(out)`. `scores` (mean per measure by step) default to the ones the
    validation images carry. ExportError when the pet has no such checkpoint.
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}: use one of {', '.join(FORMATS)}.")
    chosen = await find_checkpoint(db, pet, step)
    step = chosen.checkpoint.step
    if fmt == "kohya":
        download = await download_of(db, store, chosen, base_model)
        source, name = download.path, download.filename
    else:
        key = chosen.checkpoint.diffusers_key
        source, name = await store.local_path(key), key.rpartition("/")[2]
    rows = [image for image in await runs.list_validation_images(db, chosen.run.id) if image.step in (0, step)]
    files = [(source, out / name)]
    card_images = []
    for image, relative in zip(rows, _image_names(rows), strict=True):
        files.append((await store.local_path(image.path), out / relative))
        card_images.append(CardImage(relative, image.prompt, image.seed, image.step))
    facts = CardFacts(
        pet, chosen.run.id, step, chosen.params, base_model_name(base_model), vae, name, fmt == "kohya", card_images
    )
    card = model_card(facts, validation_scores(rows) if scores is None else scores)
    await asyncio.to_thread(_write, out, files, card)
    return Exported(out / name, out / CARD_FILE, [target for _, target in files[1:]], step, trigger_words(pet))


def validation_scores(images: Sequence[runs.ValidationImage]) -> dict[int, dict[str, float]] | None:
    """The mean of each measure by step over the images that carry it; None when none does."""
    found: dict[int, dict[str, list[float]]] = {}
    for image in images:
        for name in SCORE_LABELS:
            value = getattr(image, name, None)  # rows from before scoring have no such attribute
            if value is not None:
                found.setdefault(image.step, {}).setdefault(name, []).append(value)
    return {
        step: {name: sum(values) / len(values) for name, values in by_name.items()} for step, by_name in found.items()
    } or None


def _image_names(images: Sequence[runs.ValidationImage]) -> list[str]:
    """'images/step300_0.png', ...: the step and the image's place among that step's."""
    seen: Counter[int] = Counter()
    names = []
    for image in images:
        names.append(f"{IMAGES_FOLDER}/step{image.step}_{seen[image.step]}.png")
        seen[image.step] += 1
    return names


def _write(out: Path, files: list[tuple[Path, Path]], card: str) -> None:
    for source, target in files:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (out / CARD_FILE).write_text(card, encoding="utf-8")
