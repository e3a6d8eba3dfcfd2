"""Scoring generated pictures against a subject's real photos and their prompts: `Scorer`.

One `Scorer` per worker process. Its models load on first use and stay on the CPU; each
scoring call puts them on the caller's device (half precision on CUDA) and drops them there
after, so the GPU holds them only while they work (DINO ViT-S/16 + CLIP ViT-B/32: ~0.35 GB
in half precision).
A subject's photo embeddings are computed once, on its first scoring, and kept on the CPU.

If the models cannot be loaded the worker says so once and goes on without scores: scores
help choose a checkpoint, they are never worth a failed training.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from config.settings import Settings
from engine.gpu.scoring.models import ScoringModels, load_models
from storage.scores import ImageScores

log = logging.getLogger(__name__)


@dataclass
class Subject:
    """The real photos pictures are compared with (e.g. a pet's prepared crops)."""

    photos: Sequence[Path | Image.Image]
    dino: torch.Tensor | None = field(default=None, repr=False)  # embeddings, filled on first use
    clip: torch.Tensor | None = field(default=None, repr=False)

    def images(self) -> list[Image.Image]:
        return [photo if isinstance(photo, Image.Image) else Image.open(photo) for photo in self.photos]


class Scorer:
    """DINO, CLIP-I and CLIP-T of pictures, as the DreamBooth paper defines them.

    DINO / CLIP-I of a picture: the mean cosine similarity of its embedding to each real
    photo's (so a step's mean over pictures is the paper's mean over all pairs). CLIP-T: the
    cosine similarity of its CLIP embedding to its text's.
    """

    def __init__(self, dino: str, clip: str) -> None:
        self.dino_source, self.clip_source = dino, clip
        self._models: ScoringModels | None = None
        self._failed = False
        self._loading = threading.Lock()
        self._placing = threading.Lock()  # one scoring at a time: the models have one place

    @classmethod
    def from_settings(cls, settings: Settings, *, always: bool = False) -> Scorer | None:
        """The configured scorer, or None with PAWTRAIT_SCORES=off unless `always` (the people check, or a
        command asked to score)."""
        return cls(settings.score_dino, settings.score_clip) if settings.scores or always else None

    def models(self) -> ScoringModels | None:
        """The loaded models (loading them on the first call), or None if they cannot be loaded."""
        with self._loading:
            if self._models is None and not self._failed:
                try:
                    self._models = load_models(self.dino_source, self.clip_source)
                except Exception as error:  # noqa: BLE001 - whatever the reason, train on without scores
                    self._failed = True
                    log.warning(
                        "checkpoint scores are off in this worker: %s. Set PAWTRAIT_SCORE_DINO and PAWTRAIT_SCORE_CLIP "
                        "to hub ids this host can download or to local folders, or PAWTRAIT_SCORES=off to silence this.",
                        error,
                    )
            return self._models

    @contextmanager
    def placed(self, device: torch.device) -> Iterator[ScoringModels | None]:
        """The models on `device` for the duration (half precision on CUDA), only on the CPU after."""
        models = self.models()
        if models is None:
            yield None
            return
        with self._placing:
            models.place(device, torch.float16 if device.type == "cuda" else torch.float32)
            try:
                yield models
            finally:
                models.home()

    def score(
        self, subject: Subject, pictures: Sequence[Image.Image], texts: Sequence[str], device: torch.device
    ) -> list[ImageScores] | None:
        """Scores of each picture against the subject's photos and its own text; None without models."""
        with self.placed(device) as models:
            return None if models is None else score_with(models, subject, pictures, texts)


def score_with(
    models: ScoringModels, subject: Subject, pictures: Sequence[Image.Image], texts: Sequence[str]
) -> list[ImageScores]:
    """`Scorer.score` with the models already where they run."""
    if subject.dino is None or subject.clip is None:
        photos = subject.images()
        subject.dino = models.dino_embeddings(photos).cpu()
        subject.clip = models.clip_image_embeddings(photos).cpu()
    dino = models.dino_embeddings(pictures) @ subject.dino.to(models.device).T
    clip_image = models.clip_image_embeddings(pictures)
    clip_i = clip_image @ subject.clip.to(models.device).T
    clip_t = (clip_image * models.clip_text_embeddings(texts)).sum(dim=-1)
    rows = torch.stack([dino.mean(dim=1), clip_i.mean(dim=1), clip_t], dim=1).tolist()
    return [ImageScores(dino=row[0], clip_i=row[1], clip_t=row[2]) for row in rows]
