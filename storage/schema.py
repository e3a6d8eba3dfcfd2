"""The tables, as SQLAlchemy Core sees them: what every query in `storage/` is written against.

The migrations in `storage/migrations/versions/` create and change the real tables; these
definitions follow them (a test compares the two on SQLite and on PostgreSQL). Paths are
file-store keys relative to the data folder or bucket prefix. JSON values are stored as
text, booleans as 0/1 integers, times as `Timestamp` (see storage.dialects). Ids are never
handed out twice (AUTOINCREMENT on SQLite, sequences on PostgreSQL): caches and the event
relay tell rows apart by them.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, ForeignKey, Integer, MetaData, Table, Text

from storage.dialects import Timestamp

metadata = MetaData()


def _created() -> Column:
    return Column("created_at", Timestamp, nullable=False)


pets = Table(
    "pets",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("guild_id", Text, nullable=False),
    Column("owner_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("token", Text, nullable=False, unique=True),
    Column("class_noun", Text, nullable=False),
    Column("active_checkpoint_id", Integer, ForeignKey("checkpoints.id", ondelete="SET NULL", use_alter=True)),
    _created(),
    sqlite_autoincrement=True,
)

photos = Table(
    "photos",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("pet_id", Integer, ForeignKey("pets.id", ondelete="CASCADE"), nullable=False),
    Column("sha256", Text, nullable=False),
    Column("phash", Text, nullable=False),
    Column("original_name", Text, nullable=False),
    Column("original_path", Text, nullable=False),
    Column("prepared_path", Text, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("crop_left", Integer, nullable=False),
    Column("crop_top", Integer, nullable=False),
    Column("crop_size", Integer, nullable=False),
    Column("added_by", Text, nullable=False),
    Column("added_at", Timestamp, nullable=False),
    sqlite_autoincrement=True,
)

training_runs = Table(
    "training_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("pet_id", Integer, ForeignKey("pets.id", ondelete="CASCADE"), nullable=False),
    Column("status", Text, nullable=False),
    Column("params", Text, nullable=False),
    Column("step", Integer, nullable=False),
    Column("total_steps", Integer, nullable=False),
    Column("error", Text),
    _created(),
    Column("started_at", Timestamp),
    Column("finished_at", Timestamp),
    Column("chosen_checkpoint_id", Integer, ForeignKey("checkpoints.id", ondelete="SET NULL", use_alter=True)),
    # The rule's choice when the training ended (engine/usecases/scoring/choice.py), recorded once.
    Column("choice_step", Integer),
    Column("choice_reason", Text),
    Column("choice_votes", Text),  # JSON: votes counted per checkpoint step
    sqlite_autoincrement=True,
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("training_runs.id", ondelete="CASCADE"), nullable=False),
    Column("step", Integer, nullable=False),
    Column("path", Text, nullable=False),
    Column("diffusers_file", Text, nullable=False),
    Column("kohya_file", Text, nullable=False),
    _created(),
    sqlite_autoincrement=True,
)

validation_images = Table(
    "validation_images",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("training_runs.id", ondelete="CASCADE"), nullable=False),
    Column("step", Integer, nullable=False),
    Column("checkpoint_id", Integer, ForeignKey("checkpoints.id", ondelete="CASCADE")),
    Column("prompt", Text, nullable=False),
    Column("seed", BigInteger, nullable=False),
    Column("path", Text, nullable=False),
    Column("message_id", Text),
    _created(),
    # Scores of the picture (engine/gpu/scoring); empty when it was rendered without scoring.
    Column("dino", Float),
    Column("clip_i", Float),
    Column("clip_t", Float),
    Column("flagged", Integer),  # the safety check's verdict: 1 flagged, 0 passed, empty unscreened
)

votes = Table(
    "votes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("validation_image_id", Integer, ForeignKey("validation_images.id", ondelete="CASCADE")),
    Column("checkpoint_id", Integer, ForeignKey("checkpoints.id", ondelete="CASCADE")),
    Column("user_id", Text, nullable=False),
    Column("emoji", Text, nullable=False),
    _created(),
)

generations = Table(
    "generations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("guild_id", Text, nullable=False),
    Column("pet_id", Integer, ForeignKey("pets.id", ondelete="CASCADE")),
    Column("checkpoint_id", Integer, ForeignKey("checkpoints.id", ondelete="SET NULL")),
    Column("prompt", Text, nullable=False),
    Column("negative_prompt", Text, nullable=False),
    Column("seed", BigInteger, nullable=False),
    Column("steps", Integer, nullable=False),
    Column("guidance", Float, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("lora_scale", Float, nullable=False),
    Column("files", Text, nullable=False),
    Column("requested_by", Text, nullable=False),
    Column("message_id", Text),
    _created(),
    Column("source_generation_id", Integer, ForeignKey("generations.id", ondelete="SET NULL")),
    Column("source_image", Integer),
    Column("variation_strength", Float),
    # The copy 📌 posted to the gallery, so a moderator's 🗑 removes it too.
    Column("gallery_channel_id", Text),
    Column("gallery_message_id", Text),
    Column("flagged", Text),  # JSON list of the safety check's verdicts, one per file; empty unscreened
    sqlite_autoincrement=True,
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("guild_id", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("result", Text),
    Column("progress", Float, nullable=False),
    Column("progress_text", Text),
    Column("run_id", Integer, ForeignKey("training_runs.id", ondelete="CASCADE")),
    Column("generation_id", Integer, ForeignKey("generations.id", ondelete="SET NULL")),
    Column("attempts", Integer, nullable=False),
    Column("worker_id", Text),
    Column("heartbeat_at", Timestamp),
    Column("cancel_requested", Integer, nullable=False),
    Column("error", Text),
    _created(),
    Column("started_at", Timestamp),
    Column("finished_at", Timestamp),
    sqlite_autoincrement=True,
)

job_events = Table(
    "job_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("kind", Text, nullable=False),
    Column("data", Text, nullable=False),
    _created(),
    Column("tx", BigInteger, nullable=False),  # the writing transaction (see dialects.event_horizon)
    sqlite_autoincrement=True,
)

guild_settings = Table(
    "guild_settings",
    metadata,
    Column("guild_id", Text, primary_key=True),
    Column("gallery_channel_id", Text),
    Column("vote_emoji", Text, nullable=False),
    Column("who_may_train", Text, nullable=False),
    Column("max_steps", Integer, nullable=False),
    Column("mod_channel_id", Text),  # where 🚩 reports go
    Column("safety", Text, nullable=False),  # what happens to flagged pictures (storage.guild_settings.SAFETY)
)

pet_sharing = Table(
    "pet_sharing",
    metadata,
    Column("pet_id", Integer, ForeignKey("pets.id", ondelete="CASCADE"), primary_key=True),
    Column("others_may_imagine", Integer, nullable=False),
)

discord_jobs = Table(
    "discord_jobs",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("guild_id", Text, nullable=False),
    Column("channel_id", Text, nullable=False),
    Column("thread_id", Text),
    Column("status_message_id", Text),
    Column("requested_by", Text, nullable=False),
)

discord_relay = Table(
    "discord_relay",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("last_event_id", Integer, nullable=False),
    Column("last_event_tx", BigInteger, nullable=False),
)

# Named leases that several processes or hosts compete for (e.g. building one class's
# prior-preservation images): whoever holds an unexpired lease works, the others wait.
leases = Table(
    "leases",
    metadata,
    Column("name", Text, primary_key=True),
    Column("holder", Text, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
)

# Every live worker (one per GPU, on any host): what it does now and when it last beat.
workers = Table(
    "workers",
    metadata,
    Column("id", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("device", Text, nullable=False),
    Column("state", Text, nullable=False),  # starting | idle | busy | stopping
    Column("job_id", Integer),
    Column("started_at", Timestamp, nullable=False),
    Column("heartbeat_at", Timestamp, nullable=False),
)

# One line per member action and screening verdict (storage/audit.py). No foreign keys: a
# line outlives /forget and retention; PAWTRAIT_AUDIT_DAYS prunes it.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("guild_id", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    _created(),
    Column("command", Text, nullable=False),
    Column("verdict", Text, nullable=False),
    Column("detail", Text),
    Column("prompt", Text),
    Column("pet", Text),
    Column("checkpoint_id", Integer),
    Column("seed", BigInteger),
    Column("job_id", Integer),
    Column("generation_id", Integer),
    sqlite_autoincrement=True,
)

# A server's own words refused in prompts (/settings block-words), kept as the moderator typed them.
block_words = Table(
    "block_words",
    metadata,
    Column("guild_id", Text, primary_key=True),
    Column("word", Text, primary_key=True),
    Column("added_by", Text, nullable=False),
    _created(),
)

# Members a server's moderators denied the bot (/settings deny).
denied_members = Table(
    "denied_members",
    metadata,
    Column("guild_id", Text, primary_key=True),
    Column("user_id", Text, primary_key=True),
    Column("denied_by", Text, nullable=False),
    _created(),
)
