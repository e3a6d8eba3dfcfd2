"""Moderation: the audit log, a server's block words and denied members, its moderators'
channel, and where a generation was shared in the gallery.

- audit_log: one line per member action (command, button, settings change) and per
  screening verdict. The pet is kept by name and the checkpoint, job and generation by id
  without foreign keys: the line outlives `/forget` and retention (PAWTRAIT_AUDIT_DAYS
  prunes it). AUTOINCREMENT on SQLite: a pruned line's id is never given to a new one.
- block_words: a server's own words refused in prompts (`/settings block-words`).
- denied_members: members a server's moderators denied the bot (`/settings deny`).
- guild_settings.mod_channel_id: where 🚩 reports go (`/settings mod-channel`).
- generations.gallery_channel_id, .gallery_message_id: the gallery copy of a shared
  picture, so a moderator's 🗑 removes it too.

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None


def _time() -> sa.types.TypeEngine:
    return sa.TIMESTAMP(timezone=True) if op.get_bind().dialect.name == "postgresql" else sa.Text()


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("guild_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("verdict", sa.Text, nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("prompt", sa.Text),
        sa.Column("pet", sa.Text),
        sa.Column("checkpoint_id", sa.Integer),
        sa.Column("seed", sa.BigInteger),
        sa.Column("job_id", sa.Integer),
        sa.Column("generation_id", sa.Integer),
        sqlite_autoincrement=True,
    )
    op.create_index("audit_log_guild", "audit_log", ["guild_id", "created_at"])
    op.create_index("audit_log_created", "audit_log", ["created_at"])
    op.create_index("audit_log_generation", "audit_log", ["generation_id"])
    op.create_table(
        "block_words",
        sa.Column("guild_id", sa.Text, primary_key=True),
        sa.Column("word", sa.Text, primary_key=True),
        sa.Column("added_by", sa.Text, nullable=False),
        sa.Column("created_at", _time(), nullable=False),
    )
    op.create_table(
        "denied_members",
        sa.Column("guild_id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("denied_by", sa.Text, nullable=False),
        sa.Column("created_at", _time(), nullable=False),
    )
    op.add_column("guild_settings", sa.Column("mod_channel_id", sa.Text))
    op.add_column("generations", sa.Column("gallery_channel_id", sa.Text))
    op.add_column("generations", sa.Column("gallery_message_id", sa.Text))
