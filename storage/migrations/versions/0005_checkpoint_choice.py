"""A training's checkpoint is chosen once: the rule's choice is recorded on its run.

- training_runs.choice_step, .choice_reason, .choice_votes: the step the rule kept when the
  training ended, the sentence that says why, and the votes it counted per step (JSON). The
  bot's announcement, and any replay of it, shows this record instead of applying the rule
  again, so it never undoes a `/pick` made in between.
Runs that finished earlier keep the checkpoint they chose then (recorded without votes).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("training_runs", sa.Column("choice_step", sa.Integer))
    op.add_column("training_runs", sa.Column("choice_reason", sa.Text))
    op.add_column("training_runs", sa.Column("choice_votes", sa.Text))
    op.execute(
        "UPDATE training_runs SET choice_step = (SELECT step FROM checkpoints WHERE checkpoints.id = chosen_checkpoint_id), "
        "choice_reason = 'it was kept when the training finished', choice_votes = '{}' "
        "WHERE status = 'succeeded' AND chosen_checkpoint_id IS NOT NULL"
    )
