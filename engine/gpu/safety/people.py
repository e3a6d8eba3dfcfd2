"""Pets, not people: a training's photos are checked before its first step.

CLIP zero-shot with the scoring CLIP model (already on every worker): each photo is
compared with short descriptions of people and of things that are not people, and a photo
whose closest description is a person is refused. The nearest description (argmax) rather
than a probability threshold: it needs no calibration, and with CLIP's own logit scale it
is the same decision. Plush toys, cars and other non-animal subjects have descriptions of
their own, so they stay allowed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from engine.gpu.generation.service import open_rgb
from engine.gpu.scoring.models import ScoringModels
from engine.gpu.scoring.scorer import Scorer
from storage.db import Queries
from storage.files import FileMissing, FileStore
from storage.pets import Pet
from storage.photos import list_photos

PERSON = ("a photo of a person", "a close-up photo of a person's face", "a selfie of a man or a woman")
NOT_PERSON = ("a photo of an animal", "a photo of a pet", "a photo of a stuffed toy", "a photo of an object",
              "a photo of a car")


class PeopleInPhotos(ValueError):
    """Some of a pet's photos show a person; the message names them and says what to do."""


def shows_person(models: ScoringModels, images: Sequence[Image.Image], class_noun: str) -> list[bool]:
    """True for each image whose nearest description is one of a person."""
    labels = [*PERSON, *NOT_PERSON, f"a photo of a {class_noun}"]
    similarity = models.clip_image_embeddings(images) @ models.clip_text_embeddings(labels).T
    return [index < len(PERSON) for index in similarity.argmax(dim=1).tolist()]


async def refuse_people(db: Queries, store: FileStore, pet: Pet, scorer: Scorer, device: torch.device) -> None:
    """Raise PeopleInPhotos naming each photo of `pet` whose subject is a person (the prepared
    crop, which is what trains); raise ValueError when the check itself cannot run."""
    photos = await list_photos(db, pet.id)
    paths: list[Path] = []
    for photo in photos:
        try:
            paths.append(await store.local_path(photo.prepared_path))
        except FileMissing:
            raise ValueError(f"{pet.name}'s photo `{photo.original_name}` is missing from the file store; "
                             "remove and add that photo again.") from None
    people = await asyncio.to_thread(_check, scorer, paths, pet.class_noun, device)
    if people is None:
        raise ValueError("this worker cannot check that the photos show a pet and not a person (the CLIP model "
                         "could not be loaded), so it trains nothing for now; the bot's operator can set "
                         "PAWTRAIT_SCORE_CLIP to a model this host can load.")
    names = [photo.original_name for photo, person in zip(photos, people) if person]
    if names:
        listed = "\n".join(f"• `{name}`: its subject looks like a person, not a {pet.class_noun}" for name in names)
        raise PeopleInPhotos(
            f"Pawtrait learns pets, not people, so the training did not start. "
            f"{len(names)} of {pet.name}'s photos show a person:\n{listed}\n"
            f"`/forget` {pet.name} and `/teach` it again without these photos, then `/train`."
        )


def _check(scorer: Scorer, paths: list[Path], class_noun: str, device: torch.device) -> list[bool] | None:
    with scorer.placed(device) as models:
        if models is None:
            return None
        return shows_person(models, [open_rgb(path) for path in paths], class_noun)
