"""Tiny CLIP models that see people exactly where a test says (engine/gpu/safety/people.py).

A random tiny CLIP has no idea what a person is: its nearest description of a photo is
arbitrary. These helpers solve one of its projections (least squares, exact for a few inputs)
so that chosen images or texts land on chosen embeddings, and save the result as a model folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPProcessor

from engine.gpu.safety.people import NOT_PERSON, PERSON
from engine.gpu.scoring.models import ScoringModels, load_models

from photo_samples import varied_photo


def _pooled_images(models: ScoringModels, images: list[Image.Image]) -> torch.Tensor:
    pixels = models._pixels(models.clip_processor.image_processor, images)
    return models.clip.vision_model(pixel_values=pixels).pooler_output


def _pooled_texts(models: ScoringModels, texts: list[str]) -> torch.Tensor:
    tokens = models.clip_processor.tokenizer(texts, padding=True, return_tensors="pt")
    return models.clip.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output


def _save(models: ScoringModels, source: Path, target: Path) -> Path:
    models.clip.save_pretrained(target)
    CLIPProcessor.from_pretrained(source).save_pretrained(target)
    return target


@torch.no_grad()
def person_clip(scoring: tuple[Path, Path], target: Path, photos: list[Image.Image], person: int, class_noun: str) -> Path:
    """A copy of the tiny CLIP whose image projection maps photo `person` onto the text embedding of
    "a photo of a person" and every other photo onto that of "a photo of a <class_noun>"."""
    dino, clip = scoring
    models = load_models(str(dino), str(clip))
    texts = models.clip_text_embeddings([PERSON[0] if index == person else f"a photo of a {class_noun}"
                                         for index in range(len(photos))])
    pooled = _pooled_images(models, photos)
    models.clip.visual_projection.weight.copy_((torch.linalg.pinv(pooled) @ texts).T)
    return _save(models, clip, target)


@torch.no_grad()
def see_no_people(scoring: tuple[Path, Path]) -> None:
    """Rewrite the tiny CLIP in place so that no picture looks like a person: the descriptions of
    people point away from where every image embedding lies, the others towards it."""
    dino, clip = scoring
    models = load_models(str(dino), str(clip))
    rng = np.random.default_rng(0)
    samples = [varied_photo(seed) for seed in range(1, 9)]
    samples += [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]
    images = torch.nn.functional.normalize(models.clip.visual_projection(_pooled_images(models, samples)), dim=-1)
    toward = torch.nn.functional.normalize(images.mean(dim=0), dim=0)
    labels = [*PERSON, *NOT_PERSON]
    targets = torch.stack([-toward if label in PERSON else toward for label in labels])
    models.clip.text_projection.weight.copy_((torch.linalg.pinv(_pooled_texts(models, labels)) @ targets).T)
    models.clip.save_pretrained(clip)
