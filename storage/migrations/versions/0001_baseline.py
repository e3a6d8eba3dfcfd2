"""Baseline: the schema of the single-host release (SQL migrations V1-V4).

SQLite: the release's own SQL files (storage/migrations/sqlite/), applied from the
`PRAGMA user_version` the database is at, so a database written by that release (at 4)
gains nothing here and a new one gets exactly the same tables. PostgreSQL: the same
tables in its own types (timestamptz, bigint seeds, a lower(name) index for the
case-insensitive pet names SQLite's NOCASE gives).

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import re
import sqlite3
from importlib import resources

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_LEGACY = re.compile(r"^V(\d+)__\w+\.sql$")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_release_migrations()
    else:
        _create_tables()


def _sqlite_release_migrations() -> None:
    bind = op.get_bind()
    current = bind.exec_driver_sql("PRAGMA user_version").scalar() or 0
    folder = resources.files("storage").joinpath("migrations", "sqlite")
    files = sorted((int(m.group(1)), entry) for entry in folder.iterdir() if (m := _LEGACY.match(entry.name)))
    for version, entry in files:
        if version <= current:
            continue
        for statement in _statements(entry.read_text(encoding="utf-8")):
            bind.exec_driver_sql(statement)
        bind.exec_driver_sql(f"PRAGMA user_version = {version}")


def _statements(script: str) -> list[str]:
    """Split a SQL script into statements the way SQLite's own tokenizer ends them."""
    found, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            found.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(part.strip().startswith("--") for part in buffer.strip().splitlines()):
        found.append(buffer.strip())
    return found


def _now() -> sa.TextClause:
    return sa.text("now()")


def _created() -> sa.Column:
    return sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now())


def _status(name: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(
        "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name=f"{name}_status"
    )


def _create_tables() -> None:
    op.create_table(
        "pets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("guild_id", sa.Text, nullable=False),
        sa.Column("owner_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False, unique=True),
        sa.Column("class_noun", sa.Text, nullable=False),
        sa.Column("active_checkpoint_id", sa.Integer),  # foreign key added once checkpoints exists
        _created(),
    )
    op.execute("CREATE UNIQUE INDEX pets_guild_name ON pets (guild_id, lower(name))")
    op.create_table(
        "photos",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("pet_id", sa.Integer, sa.ForeignKey("pets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("phash", sa.Text, nullable=False),
        sa.Column("original_name", sa.Text, nullable=False),
        sa.Column("original_path", sa.Text, nullable=False),
        sa.Column("prepared_path", sa.Text, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("crop_left", sa.Integer, nullable=False),
        sa.Column("crop_top", sa.Integer, nullable=False),
        sa.Column("crop_size", sa.Integer, nullable=False),
        sa.Column("added_by", sa.Text, nullable=False),
        sa.Column("added_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
        sa.UniqueConstraint("pet_id", "sha256"),
    )
    op.create_index("photos_pet", "photos", ["pet_id"])
    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("pet_id", sa.Integer, sa.ForeignKey("pets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="queued"),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("step", sa.Integer, nullable=False, server_default="0"),
        sa.Column("total_steps", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        _created(),
        sa.Column("started_at", sa.TIMESTAMP(timezone=True)),
        sa.Column("finished_at", sa.TIMESTAMP(timezone=True)),
        sa.Column("chosen_checkpoint_id", sa.Integer),
        _status("training_runs"),
    )
    op.create_index("training_runs_pet", "training_runs", ["pet_id"])
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("training_runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("diffusers_file", sa.Text, nullable=False),
        sa.Column("kohya_file", sa.Text, nullable=False),
        _created(),
        sa.UniqueConstraint("run_id", "step"),
    )
    op.create_foreign_key(
        "pets_active_checkpoint", "pets", "checkpoints", ["active_checkpoint_id"], ["id"], ondelete="SET NULL"
    )
    op.create_foreign_key(
        "training_runs_chosen_checkpoint", "training_runs", "checkpoints", ["chosen_checkpoint_id"], ["id"],
        ondelete="SET NULL",
    )
    op.create_table(
        "validation_images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("training_runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("checkpoint_id", sa.Integer, sa.ForeignKey("checkpoints.id", ondelete="CASCADE")),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text),
        _created(),
    )
    op.create_index("validation_images_run", "validation_images", ["run_id", "step"])
    op.create_index("validation_images_message", "validation_images", ["message_id"])
    op.create_table(
        "votes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("validation_image_id", sa.Integer, sa.ForeignKey("validation_images.id", ondelete="CASCADE")),
        sa.Column("checkpoint_id", sa.Integer, sa.ForeignKey("checkpoints.id", ondelete="CASCADE")),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("emoji", sa.Text, nullable=False),
        _created(),
        sa.CheckConstraint("(validation_image_id IS NULL) <> (checkpoint_id IS NULL)", name="votes_one_target"),
    )
    op.create_index(
        "votes_image_user", "votes", ["validation_image_id", "user_id", "emoji"], unique=True,
        postgresql_where=sa.text("validation_image_id IS NOT NULL"),
    )
    op.create_index(
        "votes_checkpoint_user", "votes", ["checkpoint_id", "user_id", "emoji"], unique=True,
        postgresql_where=sa.text("checkpoint_id IS NOT NULL"),
    )
    op.create_table(
        "generations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("guild_id", sa.Text, nullable=False),
        sa.Column("pet_id", sa.Integer, sa.ForeignKey("pets.id", ondelete="CASCADE")),
        sa.Column("checkpoint_id", sa.Integer, sa.ForeignKey("checkpoints.id", ondelete="SET NULL")),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("negative_prompt", sa.Text, nullable=False, server_default=""),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("guidance", sa.Float, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("lora_scale", sa.Float, nullable=False, server_default="1.0"),
        sa.Column("files", sa.Text, nullable=False, server_default="[]"),
        sa.Column("requested_by", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text),
        _created(),
        sa.Column("source_generation_id", sa.Integer, sa.ForeignKey("generations.id", ondelete="SET NULL")),
        sa.Column("source_image", sa.Integer),
        sa.Column("variation_strength", sa.Float),
    )
    op.create_index("generations_pet", "generations", ["pet_id"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="queued"),
        sa.Column("guild_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("result", sa.Text),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("progress_text", sa.Text),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("training_runs.id", ondelete="CASCADE")),
        sa.Column("generation_id", sa.Integer, sa.ForeignKey("generations.id", ondelete="SET NULL")),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("worker_id", sa.Text),
        sa.Column("heartbeat_at", sa.TIMESTAMP(timezone=True)),
        sa.Column("cancel_requested", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
        _created(),
        sa.Column("started_at", sa.TIMESTAMP(timezone=True)),
        sa.Column("finished_at", sa.TIMESTAMP(timezone=True)),
        sa.CheckConstraint("kind IN ('train', 'generate', 'class_images')", name="jobs_kind"),
        _status("jobs"),
    )
    op.create_index("jobs_status", "jobs", ["status", "kind", "id"])
    op.create_index("jobs_user", "jobs", ["user_id", "status"])
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("data", sa.Text, nullable=False, server_default="{}"),
        _created(),
    )
    op.create_index("job_events_job", "job_events", ["job_id", "id"])
    op.create_table(
        "guild_settings",
        sa.Column("guild_id", sa.Text, primary_key=True),
        sa.Column("gallery_channel_id", sa.Text),
        sa.Column("vote_emoji", sa.Text, nullable=False, server_default="⭐"),
        sa.Column("who_may_train", sa.Text, nullable=False, server_default="everyone"),
        sa.Column("max_steps", sa.Integer, nullable=False, server_default="2000"),
        sa.CheckConstraint("who_may_train IN ('everyone', 'managers')", name="guild_settings_who_may_train"),
    )
    op.create_table(
        "pet_sharing",
        sa.Column("pet_id", sa.Integer, sa.ForeignKey("pets.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("others_may_imagine", sa.Integer, nullable=False, server_default="1"),
    )
    op.create_table(
        "discord_jobs",
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("guild_id", sa.Text, nullable=False),
        sa.Column("channel_id", sa.Text, nullable=False),
        sa.Column("thread_id", sa.Text),
        sa.Column("status_message_id", sa.Text),
        sa.Column("requested_by", sa.Text, nullable=False),
    )
    op.create_table(
        "discord_relay",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_event_id", sa.Integer, nullable=False),
        sa.CheckConstraint("id = 1", name="discord_relay_one_row"),
    )
