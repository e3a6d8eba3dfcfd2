"""One line of facts per pet for listings (`pawtrait pets`, the bot's pet list)."""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite


@dataclass(frozen=True)
class PetSummary:
    id: int
    name: str
    owner_id: str
    class_noun: str
    token: str
    photos: int
    status: str  # needs photos | ready to train | queued for training | training (step n/N) | trained (step n)


_SUMMARY_SQL = """
SELECT p.id, p.name, p.owner_id, p.class_noun, p.token,
       (SELECT count(*) FROM photos WHERE pet_id = p.id) AS photos,
       (SELECT step FROM checkpoints WHERE id = p.active_checkpoint_id) AS active_step,
       (SELECT step FROM training_runs WHERE pet_id = p.id AND status = 'running'
        ORDER BY id DESC LIMIT 1) AS running_step,
       (SELECT total_steps FROM training_runs WHERE pet_id = p.id AND status = 'running'
        ORDER BY id DESC LIMIT 1) AS running_total,
       (SELECT count(*) FROM training_runs WHERE pet_id = p.id AND status = 'queued') AS queued,
       (SELECT step FROM training_runs WHERE pet_id = p.id AND status = 'succeeded'
        ORDER BY id DESC LIMIT 1) AS trained_step
FROM pets AS p
WHERE p.guild_id = ?
ORDER BY p.name COLLATE NOCASE, p.id
"""


def _status(row: aiosqlite.Row) -> str:
    """What the owner would do next depends on this, so a running training wins over the rest."""
    if row["running_step"] is not None:
        return f"training (step {row['running_step']}/{row['running_total']})"
    if row["queued"]:
        return "queued for training"
    trained_step = row["active_step"] if row["active_step"] is not None else row["trained_step"]
    if trained_step is not None:
        return f"trained (step {trained_step})"
    return "ready to train" if row["photos"] else "needs photos"


async def pet_summaries(db: aiosqlite.Connection, guild_id: str) -> list[PetSummary]:
    """The guild's pets by name, with photo counts and a status derived from their runs."""
    async with db.execute(_SUMMARY_SQL, (guild_id,)) as cursor:
        rows = await cursor.fetchall()
    return [
        PetSummary(
            id=row["id"],
            name=row["name"],
            owner_id=row["owner_id"],
            class_noun=row["class_noun"],
            token=row["token"],
            photos=row["photos"],
            status=_status(row),
        )
        for row in rows
    ]
