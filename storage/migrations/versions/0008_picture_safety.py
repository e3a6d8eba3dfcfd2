"""Picture safety: each server's policy for flagged pictures, and the verdict of every picture.

- guild_settings.safety: 'standard' (a flagged picture is posted only in an age-restricted
  channel, as a spoiler) or 'strict' (never posted). Existing servers get 'standard'.
- generations.flagged: a JSON list, one true/false per picture in `files` order; empty for
  pictures painted unscreened (older rows, PAWTRAIT_SAFETY=off).
- validation_images.flagged: 1 flagged, 0 passed, empty unscreened.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("guild_settings", sa.Column("safety", sa.Text, nullable=False, server_default="standard"))
    op.add_column("generations", sa.Column("flagged", sa.Text))
    op.add_column("validation_images", sa.Column("flagged", sa.Integer))
