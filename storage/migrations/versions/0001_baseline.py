"""Baseline: the schema of the single-host release (its SQL migrations V1-V4), on SQLite and PostgreSQL.

The release's four steps, written once for both databases: times are text on SQLite (ISO 8601,
as storage.dialects.Timestamp reads them) and timestamptz on PostgreSQL; pet names are unique
case-insensitively (SQLite's NOCASE, PostgreSQL's lower(name)). A new database gets every
step; a SQLite database written by the release gets the steps it lacks, from the `PRAGMA
user_version` the release recorded (at 4: none), and the same version afterwards. SQLite's
tables whose ids must never come back are created with AUTOINCREMENT (what 0004 gives a
release's tables).

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    current = (bind.exec_driver_sql("PRAGMA user_version").scalar() or 0) if sqlite else 0
    for version, step in enumerate((_v1_pets_and_runs, _v2_jobs, _v3_discord, _v4_variations), start=1):
        if version <= current:
            continue
        step()
        if sqlite:
            bind.exec_driver_sql(f"PRAGMA user_version = {version}")


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _time() -> sa.types.TypeEngine:
    return sa.Text() if _sqlite() else sa.TIMESTAMP(timezone=True)


def _now() -> sa.TextClause:
    return sa.text("(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))" if _sqlite() else "now()")


def _created() -> sa.Column:
    return sa.Column("created_at", _time(), nullable=False, server_default=_now())


def _status(name: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(
        "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name=f"{name}_status"
    )


def _checkpoint_reference() -> tuple[sa.ForeignKey, ...]:
    """SQLite takes a foreign key to a table not created yet; PostgreSQL gets it once checkpoints exists."""
    return (sa.ForeignKey("checkpoints.id", ondelete="SET NULL"),) if _sqlite() else ()


def _v1_pets_and_runs() -> None:
    """V1: pets, their photos, training runs with checkpoints and validation images, votes, generations."""
    op.create_table(
        "pets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("guild_id", sa.Text, nullable=False),
        sa.Column("owner_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False, unique=True),
        sa.Column("class_noun", sa.Text, nullable=False),
        sa.Column("active_checkpoint_id", sa.Integer, *_checkpoint_reference()),
        _created(),
        sqlite_autoincrement=True,
    )
    name = "name COLLATE NOCASE" if _sqlite() else "lower(name)"
    op.execute(f"CREATE UNIQUE INDEX pets_guild_name ON pets (guild_id, {name})")
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
        sa.Column("added_at", _time(), nullable=False, server_default=_now()),
        sa.UniqueConstraint("pet_id", "sha256"),
        sqlite_autoincrement=True,
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
        sa.Column("started_at", _time()),
        sa.Column("finished_at", _time()),
        sa.Column("chosen_checkpoint_id", sa.Integer, *_checkpoint_reference()),
        _status("training_runs"),
        sqlite_autoincrement=True,
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
        sqlite_autoincrement=True,
    )
    if not _sqlite():
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
        postgresql_where=sa.text("validation_image_id IS NOT NULL"), sqlite_where=sa.text("validation_image_id IS NOT NULL"),
    )
    op.create_index(
        "votes_checkpoint_user", "votes", ["checkpoint_id", "user_id", "emoji"], unique=True,
        postgresql_where=sa.text("checkpoint_id IS NOT NULL"), sqlite_where=sa.text("checkpoint_id IS NOT NULL"),
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
        sqlite_autoincrement=True,
    )
    op.create_index("generations_pet", "generations", ["pet_id"])


def _v2_jobs() -> None:
    """V2: the GPU job queue and what happened to each job."""
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
        sa.Column("heartbeat_at", _time()),
        sa.Column("cancel_requested", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
        _created(),
        sa.Column("started_at", _time()),
        sa.Column("finished_at", _time()),
        sa.CheckConstraint("kind IN ('train', 'generate', 'class_images')", name="jobs_kind"),
        _status("jobs"),
        sqlite_autoincrement=True,
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
        sqlite_autoincrement=True,
    )
    op.create_index("job_events_job", "job_events", ["job_id", "id"])


def _v3_discord() -> None:
    """V3: what the Discord front end remembers between restarts."""
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


def _v4_variations() -> None:
    """V4: a generation may repaint one image of an earlier one (img2img). SQLite adds a column
    with a foreign key only in the column's own definition, which PostgreSQL takes too."""
    op.execute(
        "ALTER TABLE generations ADD COLUMN source_generation_id INTEGER REFERENCES generations(id) ON DELETE SET NULL"
    )
    op.add_column("generations", sa.Column("source_image", sa.Integer))
    op.add_column("generations", sa.Column("variation_strength", sa.Float))
