"""Checkpoint scores: each validation image's likeness to the pet's photos and adherence to its prompt.

- validation_images.dino, .clip_i: cosine similarity of the picture to the pet's prepared
  photos (DINO ViT-S/16 and CLIP image embeddings, mean over the photos), as the DreamBooth
  paper measures subject fidelity.
- validation_images.clip_t: cosine similarity of the picture to its prompt (CLIP), the
  paper's prompt fidelity.
Empty for pictures rendered without scoring (older rows, PAWTRAIT_SCORES=off, models that
could not be loaded).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCORES = ("dino", "clip_i", "clip_t")


def upgrade() -> None:
    for name in SCORES:
        op.add_column("validation_images", sa.Column(name, sa.Float))
