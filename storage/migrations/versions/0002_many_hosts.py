"""Many hosts: events ordered by commit, the relay's position in that order, named leases.

- job_events.tx: the transaction that wrote the event (PostgreSQL; 0 in SQLite), so readers
  walk events in commit order (storage.dialects.event_horizon). Older events keep 0: they
  were all committed before any new one.
- discord_relay.last_event_tx: the relay's position is (tx, id) from now on.
- workers: every live worker, its host, what it is doing and its last heartbeat, so a
  training hands a waiting generation to an idle worker instead of pausing, and `/queue`
  can say how many GPUs serve the queue.
- leases: one holder at a time for work several hosts could start at once (building one
  class's prior-preservation images), expiring on the database's clock if its holder dies.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _time() -> sa.types.TypeEngine:
    return sa.TIMESTAMP(timezone=True) if op.get_bind().dialect.name == "postgresql" else sa.Text()


def upgrade() -> None:
    op.add_column("job_events", sa.Column("tx", sa.BigInteger, nullable=False, server_default="0"))
    op.create_index("job_events_order", "job_events", ["tx", "id"])
    op.add_column("discord_relay", sa.Column("last_event_tx", sa.BigInteger, nullable=False, server_default="0"))
    op.create_table(
        "leases",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("expires_at", _time(), nullable=False),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("device", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("job_id", sa.Integer),
        sa.Column("started_at", _time(), nullable=False),
        sa.Column("heartbeat_at", _time(), nullable=False),
        sa.CheckConstraint("state IN ('starting', 'idle', 'busy', 'stopping')", name="workers_state"),
    )
