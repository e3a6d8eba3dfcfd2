"""Ids are never handed out twice: SQLite's tables are rebuilt with AUTOINCREMENT.

An `INTEGER PRIMARY KEY` without AUTOINCREMENT takes max(id) + 1, so deleting the newest row
(a forgotten pet, its runs, checkpoints, jobs and events) gave the next row the same id: a
worker that had cached the old checkpoint by id painted it for the new pet, and the bot's
event relay, past the old events' ids, never saw the new ones. With AUTOINCREMENT SQLite
keeps the largest id ever used (sqlite_sequence). The job events' counter also starts past
the relay's position, so events written after a deletion reach Discord.

SQLite changes a table's definition only by copying it (https://sqlite.org/lang_altertable.html,
"other kinds of table schema changes"): each table is created anew under another name from
its own CREATE statement with AUTOINCREMENT added, filled with every row, the old one
dropped and the new one renamed; its indexes are created again. storage.db.upgrade runs
SQLite's migrations with foreign keys off (dropping a parent with them on would cascade its
children away); this one refuses to run otherwise and checks every foreign key before it
commits.

PostgreSQL: serial columns draw from sequences, which never go back, not even when the
inserting transaction rolls back; nothing to do.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import re

from alembic import op
from sqlalchemy.engine import Connection

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ("pets", "photos", "training_runs", "checkpoints", "generations", "jobs", "job_events")
_ROWID = re.compile(r"\bid\s+INTEGER\s+PRIMARY\s+KEY\b(?!\s+AUTOINCREMENT)", re.IGNORECASE)
_NAME = re.compile(r"^\s*CREATE\s+TABLE\s+(\"?\w+\"?)", re.IGNORECASE)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError("migration 0004 copies tables: it must run with foreign keys off (see storage.db.upgrade)")
    for table in TABLES:
        _rebuild(bind, table)
    # The relay reads events past its position: new ones must come after it even if the
    # newest events it handled were deleted (before this revision their ids were reused).
    relay = bind.exec_driver_sql("SELECT max(last_event_id) FROM discord_relay").scalar() or 0
    bind.exec_driver_sql("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'job_events'", (relay,))
    bind.exec_driver_sql(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'job_events', ? "
        "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'job_events')",
        (relay,),
    )
    broken = bind.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"migration 0004 left rows whose foreign keys point nowhere: {broken[:5]}")


def _rebuild(bind: Connection, table: str) -> None:
    create = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).scalar_one()
    if not _ROWID.search(create):
        return  # already AUTOINCREMENT (created so by a later release)
    indexes = [
        row[0] for row in bind.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (table,)
        )
    ]
    columns = ", ".join(f'"{row[1]}"' for row in bind.exec_driver_sql(f'PRAGMA table_info("{table}")'))
    copy = f"{table}_0004"
    statement = _NAME.sub(f'CREATE TABLE "{copy}"', _ROWID.sub("id INTEGER PRIMARY KEY AUTOINCREMENT", create, 1), 1)
    bind.exec_driver_sql(statement)
    bind.exec_driver_sql(f'INSERT INTO "{copy}" ({columns}) SELECT {columns} FROM "{table}"')
    bind.exec_driver_sql(f'DROP TABLE "{table}"')
    bind.exec_driver_sql(f'ALTER TABLE "{copy}" RENAME TO "{table}"')
    for index in indexes:
        bind.exec_driver_sql(index)
