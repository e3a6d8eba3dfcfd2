"""SQL for training runs, their checkpoints and validation images, and the votes on them.

A run row holds every parameter as JSON; checkpoint and validation rows point at files
under the data folder (relative paths), written before the row is inserted.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

import aiosqlite

UNFINISHED = ("queued", "running", "failed", "cancelled")


@dataclass(frozen=True)
class Run:
    id: int
    pet_id: int
    status: str
    params: dict[str, Any]
    step: int
    total_steps: int
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    chosen_checkpoint_id: int | None


@dataclass(frozen=True)
class Checkpoint:
    id: int
    run_id: int
    step: int
    path: str  # folder
    diffusers_file: str
    kohya_file: str
    created_at: str


@dataclass(frozen=True)
class ValidationImage:
    id: int
    run_id: int
    step: int
    checkpoint_id: int | None
    prompt: str
    seed: int
    path: str
    message_id: str | None
    created_at: str


_RUN_COLUMNS = (
    "id, pet_id, status, params, step, total_steps, error, created_at, started_at, finished_at, chosen_checkpoint_id"
)
_CHECKPOINT_COLUMNS = "id, run_id, step, path, diffusers_file, kohya_file, created_at"
_IMAGE_COLUMNS = "id, run_id, step, checkpoint_id, prompt, seed, path, message_id, created_at"
_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


def _run(row: sqlite3.Row | None) -> Run | None:
    if row is None:
        return None
    values = {key: row[key] for key in row.keys()}
    values["params"] = json.loads(values["params"])
    return Run(**values)


async def _one(db: aiosqlite.Connection, sql: str, args: tuple) -> sqlite3.Row | None:
    async with db.execute(sql, args) as cursor:
        return await cursor.fetchone()


# --- runs -------------------------------------------------------------------------------


async def insert_run(db: aiosqlite.Connection, pet_id: int, params: dict[str, Any], total_steps: int) -> int:
    cursor = await db.execute(
        "INSERT INTO training_runs (pet_id, params, total_steps) VALUES (?, ?, ?)",
        (pet_id, json.dumps(params), total_steps),
    )
    return int(cursor.lastrowid)


async def get_run(db: aiosqlite.Connection, run_id: int) -> Run | None:
    return _run(await _one(db, f"SELECT {_RUN_COLUMNS} FROM training_runs WHERE id = ?", (run_id,)))


async def list_runs(db: aiosqlite.Connection, pet_id: int) -> list[Run]:
    rows = await db.execute_fetchall(
        f"SELECT {_RUN_COLUMNS} FROM training_runs WHERE pet_id = ? ORDER BY id DESC", (pet_id,)
    )
    return [_run(row) for row in rows]  # type: ignore[misc]


async def latest_unfinished_run(db: aiosqlite.Connection, pet_id: int) -> Run | None:
    """The pet's newest run that did not succeed (queued, running, failed or cancelled): what --resume continues."""
    row = await _one(
        db,
        f"SELECT {_RUN_COLUMNS} FROM training_runs WHERE pet_id = ? ORDER BY id DESC LIMIT 1",
        (pet_id,),
    )
    run = _run(row)
    return run if run is not None and run.status in UNFINISHED else None


async def mark_running(db: aiosqlite.Connection, run_id: int, step: int) -> None:
    await db.execute(
        f"UPDATE training_runs SET status = 'running', step = ?, error = NULL, finished_at = NULL, "
        f"started_at = coalesce(started_at, {_NOW}) WHERE id = ?",
        (step, run_id),
    )


async def set_step(db: aiosqlite.Connection, run_id: int, step: int) -> None:
    await db.execute("UPDATE training_runs SET step = ? WHERE id = ?", (step, run_id))


async def finish_run(db: aiosqlite.Connection, run_id: int, status: str, step: int, error: str | None = None) -> None:
    await db.execute(
        f"UPDATE training_runs SET status = ?, step = ?, error = ?, finished_at = {_NOW} WHERE id = ?",
        (status, step, error, run_id),
    )


async def set_chosen_checkpoint(db: aiosqlite.Connection, run_id: int, checkpoint_id: int | None) -> None:
    await db.execute("UPDATE training_runs SET chosen_checkpoint_id = ? WHERE id = ?", (checkpoint_id, run_id))


# --- checkpoints ------------------------------------------------------------------------


async def add_checkpoint(
    db: aiosqlite.Connection, run_id: int, step: int, path: str, diffusers_file: str, kohya_file: str
) -> int:
    """Insert (or, when a resumed run writes the same step again, update) a checkpoint row."""
    row = await _one(
        db,
        "INSERT INTO checkpoints (run_id, step, path, diffusers_file, kohya_file) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (run_id, step) DO UPDATE SET path = excluded.path, diffusers_file = excluded.diffusers_file, "
        "kohya_file = excluded.kohya_file RETURNING id",
        (run_id, step, path, diffusers_file, kohya_file),
    )
    assert row is not None
    return int(row[0])


async def list_checkpoints(db: aiosqlite.Connection, run_id: int) -> list[Checkpoint]:
    rows = await db.execute_fetchall(
        f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE run_id = ? ORDER BY step", (run_id,)
    )
    return [Checkpoint(**dict(row)) for row in rows]


async def delete_checkpoint(db: aiosqlite.Connection, checkpoint_id: int) -> list[ValidationImage]:
    """Delete a checkpoint row; returns its validation images, whose rows cascade with it (their files are the caller's)."""
    images = await db.execute_fetchall(
        f"SELECT {_IMAGE_COLUMNS} FROM validation_images WHERE checkpoint_id = ?", (checkpoint_id,)
    )
    await db.execute("DELETE FROM checkpoints WHERE id = ?", (checkpoint_id,))
    return [ValidationImage(**dict(row)) for row in images]


async def checkpoint_in_use(db: aiosqlite.Connection, checkpoint_id: int) -> bool:
    """True when a pet uses it or a run chose it: such checkpoints are never pruned."""
    row = await _one(
        db,
        "SELECT EXISTS (SELECT 1 FROM pets WHERE active_checkpoint_id = ?) "
        "OR EXISTS (SELECT 1 FROM training_runs WHERE chosen_checkpoint_id = ?)",
        (checkpoint_id, checkpoint_id),
    )
    return bool(row[0])


# --- validation images ------------------------------------------------------------------


async def add_validation_image(
    db: aiosqlite.Connection, run_id: int, step: int, checkpoint_id: int | None, prompt: str, seed: int, path: str
) -> int:
    cursor = await db.execute(
        "INSERT INTO validation_images (run_id, step, checkpoint_id, prompt, seed, path) VALUES (?, ?, ?, ?, ?, ?)",
        (run_id, step, checkpoint_id, prompt, seed, path),
    )
    return int(cursor.lastrowid)


async def list_validation_images(db: aiosqlite.Connection, run_id: int, step: int | None = None) -> list[ValidationImage]:
    sql = f"SELECT {_IMAGE_COLUMNS} FROM validation_images WHERE run_id = ?"
    args: tuple = (run_id,)
    if step is not None:
        sql += " AND step = ?"
        args = (run_id, step)
    rows = await db.execute_fetchall(sql + " ORDER BY step, id", args)
    return [ValidationImage(**dict(row)) for row in rows]


async def unposted_validation_images(db: aiosqlite.Connection, run_id: int) -> list[ValidationImage]:
    """The run's validation images that no front end has posted yet (no message id), by step."""
    rows = await db.execute_fetchall(
        f"SELECT {_IMAGE_COLUMNS} FROM validation_images WHERE run_id = ? AND message_id IS NULL ORDER BY step, id",
        (run_id,),
    )
    return [ValidationImage(**dict(row)) for row in rows]


async def validation_is_posted(db: aiosqlite.Connection, image_id: int) -> bool:
    rows = await db.execute_fetchall(
        "SELECT 1 FROM validation_images WHERE id = ? AND message_id IS NOT NULL", (image_id,)
    )
    return bool(rows)


async def delete_validation_after(db: aiosqlite.Connection, run_id: int, step: int) -> list[ValidationImage]:
    """Forget validation images past `step` (a resumed run renders them again); returns them for file clean-up."""
    rows = await db.execute_fetchall(
        f"SELECT {_IMAGE_COLUMNS} FROM validation_images WHERE run_id = ? AND step > ?", (run_id, step)
    )
    await db.execute("DELETE FROM validation_images WHERE run_id = ? AND step > ?", (run_id, step))
    return [ValidationImage(**dict(row)) for row in rows]


async def set_validation_message(db: aiosqlite.Connection, image_id: int, message_id: str) -> None:
    await db.execute("UPDATE validation_images SET message_id = ? WHERE id = ?", (message_id, image_id))


async def validation_image_by_message(db: aiosqlite.Connection, message_id: str) -> list[ValidationImage]:
    rows = await db.execute_fetchall(
        f"SELECT {_IMAGE_COLUMNS} FROM validation_images WHERE message_id = ?", (message_id,)
    )
    return [ValidationImage(**dict(row)) for row in rows]


# --- votes ------------------------------------------------------------------------------


async def add_vote(
    db: aiosqlite.Connection,
    user_id: str,
    emoji: str,
    *,
    validation_image_id: int | None = None,
    checkpoint_id: int | None = None,
) -> bool:
    """Record a vote on an image or a checkpoint; False when that user already gave that emoji there."""
    cursor = await db.execute(
        "INSERT OR IGNORE INTO votes (validation_image_id, checkpoint_id, user_id, emoji) VALUES (?, ?, ?, ?)",
        (validation_image_id, checkpoint_id, user_id, emoji),
    )
    return cursor.rowcount == 1


async def remove_vote(
    db: aiosqlite.Connection,
    user_id: str,
    emoji: str,
    *,
    validation_image_id: int | None = None,
    checkpoint_id: int | None = None,
) -> bool:
    cursor = await db.execute(
        "DELETE FROM votes WHERE user_id = ? AND emoji = ? AND validation_image_id IS ? AND checkpoint_id IS ?",
        (user_id, emoji, validation_image_id, checkpoint_id),
    )
    return cursor.rowcount > 0


async def vote_tally(db: aiosqlite.Connection, run_id: int, emoji: str | None = None) -> dict[int, int]:
    """Votes per checkpoint step of a run: votes on the checkpoint plus votes on validation images of that step.

    Only steps that have a checkpoint count (step 0's "before" images are not a candidate);
    `emoji` restricts the count to one reaction. The bot picks the winner from this.
    """
    only = "" if emoji is None else " AND v.emoji = ?"
    per_emoji: tuple = () if emoji is None else (emoji,)
    rows = await db.execute_fetchall(
        "SELECT c.step, count(v.id) FROM checkpoints c LEFT JOIN ("
        " SELECT v.id, vi.step AS step FROM votes v JOIN validation_images vi ON vi.id = v.validation_image_id"
        f" WHERE vi.run_id = ?{only}"
        " UNION ALL"
        " SELECT v.id, c2.step FROM votes v JOIN checkpoints c2 ON c2.id = v.checkpoint_id"
        f" WHERE c2.run_id = ?{only}"
        ") v ON v.step = c.step WHERE c.run_id = ? GROUP BY c.step ORDER BY c.step",
        (run_id, *per_emoji, run_id, *per_emoji, run_id),
    )
    return {int(step): int(count) for step, count in rows}

