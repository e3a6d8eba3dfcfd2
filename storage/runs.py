"""SQL for training runs, their checkpoints and validation images, and the votes on them.

A run row holds every parameter as JSON; checkpoint and validation rows point at files
under the data folder (relative paths), written before the row is inserted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, exists, func, insert, or_, select, union_all, update
from sqlalchemy.engine import RowMapping

from storage.db import Queries
from storage.dialects import insert_for, upsert, utc_now
from storage.schema import checkpoints, pets, training_runs, validation_images, votes
from storage.scores import ImageScores

UNFINISHED = ("queued", "running", "failed", "cancelled")


@dataclass(frozen=True)
class RecordedChoice:
    """The checkpoint rule's choice for a run, as recorded when the training ended."""

    step: int
    reason: str  # one sentence for the finish message
    votes: dict[int, int]  # counted per checkpoint step


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
    choice: RecordedChoice | None = None  # None until the rule chose (see record_choice)


@dataclass(frozen=True)
class Checkpoint:
    id: int
    run_id: int
    step: int
    path: str  # folder
    diffusers_file: str  # a file-store key, or (in some rows of the first release) a bare name in `path`
    kohya_file: str
    created_at: str

    @property
    def diffusers_key(self) -> str:
        return file_key(self.path, self.diffusers_file)

    @property
    def kohya_key(self) -> str:
        return file_key(self.path, self.kohya_file)


def file_key(folder: str, name: str) -> str:
    """A checkpoint file's key: `name` is a key of its own, or a bare file name inside `folder`."""
    return name if "/" in name else f"{folder}/{name}"


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
    # Likeness to the pet's photos and adherence to the prompt (storage.scores); None when not scored.
    dino: float | None = None
    clip_i: float | None = None
    clip_t: float | None = None
    flagged: bool | None = None  # the safety check's verdict; None when unscreened

    @property
    def scores(self) -> ImageScores | None:
        if self.dino is None or self.clip_i is None or self.clip_t is None:
            return None
        return ImageScores(self.dino, self.clip_i, self.clip_t)


def _run(row: RowMapping | None) -> Run | None:
    if row is None:
        return None
    values = dict(row)
    values["params"] = json.loads(values["params"])
    step, reason, votes_json = values.pop("choice_step"), values.pop("choice_reason"), values.pop("choice_votes")
    if reason is not None:
        counted = {int(key): int(count) for key, count in json.loads(votes_json or "{}").items()}
        values["choice"] = RecordedChoice(int(step), reason, counted)
    return Run(**values)


def _images(rows: list[RowMapping]) -> list[ValidationImage]:
    return [ValidationImage(**{**row, "flagged": None if row["flagged"] is None else bool(row["flagged"])})
            for row in rows]


# --- runs -------------------------------------------------------------------------------


async def insert_run(db: Queries, pet_id: int, params: dict[str, Any], total_steps: int) -> int:
    return int(await db.scalar(
        insert(training_runs)
        .values(pet_id=pet_id, status="queued", params=json.dumps(params), step=0, total_steps=total_steps,
                created_at=utc_now())
        .returning(training_runs.c.id)
    ))


async def get_run(db: Queries, run_id: int) -> Run | None:
    return _run(await db.one(select(training_runs).where(training_runs.c.id == run_id)))


async def list_runs(db: Queries, pet_id: int) -> list[Run]:
    rows = await db.all(select(training_runs).where(training_runs.c.pet_id == pet_id).order_by(training_runs.c.id.desc()))
    return [_run(row) for row in rows]  # type: ignore[misc]


async def latest_unfinished_run(db: Queries, pet_id: int) -> Run | None:
    """The pet's newest run that did not succeed (queued, running, failed or cancelled): what --resume continues."""
    run = _run(await db.one(
        select(training_runs).where(training_runs.c.pet_id == pet_id).order_by(training_runs.c.id.desc()).limit(1)
    ))
    return run if run is not None and run.status in UNFINISHED else None


async def mark_running(db: Queries, run_id: int, step: int) -> None:
    await db.execute(
        update(training_runs).where(training_runs.c.id == run_id).values(
            status="running", step=step, error=None, finished_at=None,
            started_at=func.coalesce(training_runs.c.started_at, utc_now()),
        )
    )


async def set_step(db: Queries, run_id: int, step: int) -> None:
    await db.execute(update(training_runs).where(training_runs.c.id == run_id).values(step=step))


async def finish_run(db: Queries, run_id: int, status: str, step: int, error: str | None = None) -> None:
    await db.execute(
        update(training_runs).where(training_runs.c.id == run_id)
        .values(status=status, step=step, error=error, finished_at=utc_now())
    )


async def cancel_unstarted_run(db: Queries, run_id: int) -> None:
    """End a run that never started (its job was cancelled while queued); any other run is left as it is."""
    await db.execute(
        update(training_runs).where(training_runs.c.id == run_id, training_runs.c.status == "queued")
        .values(status="cancelled", finished_at=utc_now())
    )


async def record_choice(db: Queries, run_id: int, checkpoint_id: int, choice: RecordedChoice) -> bool:
    """Record the rule's choice and make it the run's checkpoint, once: False (and nothing
    changed) when the run already has a recorded choice."""
    result = await db.execute(
        update(training_runs)
        .where(training_runs.c.id == run_id, training_runs.c.choice_reason.is_(None))
        .values(chosen_checkpoint_id=checkpoint_id, choice_step=choice.step, choice_reason=choice.reason,
                choice_votes=json.dumps({str(step): count for step, count in choice.votes.items()}))
    )
    return result.rowcount == 1


async def set_chosen_checkpoint(db: Queries, run_id: int, checkpoint_id: int | None) -> None:
    await db.execute(update(training_runs).where(training_runs.c.id == run_id).values(chosen_checkpoint_id=checkpoint_id))


# --- checkpoints ------------------------------------------------------------------------


async def add_checkpoint(db: Queries, run_id: int, step: int, path: str, diffusers_file: str, kohya_file: str) -> int:
    """Insert (or, when a resumed run writes the same step again, update) a checkpoint row."""
    statement = upsert(db.dialect, checkpoints, ["run_id", "step"], dict(
        run_id=run_id, step=step, path=path, diffusers_file=diffusers_file, kohya_file=kohya_file, created_at=utc_now()
    ), keep=("created_at",))
    return int(await db.scalar(statement.returning(checkpoints.c.id)))


async def list_checkpoints(db: Queries, run_id: int) -> list[Checkpoint]:
    rows = await db.all(select(checkpoints).where(checkpoints.c.run_id == run_id).order_by(checkpoints.c.step))
    return [Checkpoint(**row) for row in rows]


async def delete_checkpoint(db: Queries, checkpoint_id: int) -> list[ValidationImage]:
    """Delete a checkpoint row; returns its validation images, whose rows cascade with it (their files are the caller's)."""
    async with db.transaction() as tx:
        images = await tx.all(select(validation_images).where(validation_images.c.checkpoint_id == checkpoint_id))
        await tx.execute(delete(checkpoints).where(checkpoints.c.id == checkpoint_id))
    return _images(images)


async def checkpoint_in_use(db: Queries, checkpoint_id: int) -> bool:
    """True when a pet uses it or a run chose it: such checkpoints are never pruned."""
    return bool(await db.scalar(select(or_(
        exists().where(pets.c.active_checkpoint_id == checkpoint_id),
        exists().where(training_runs.c.chosen_checkpoint_id == checkpoint_id),
    ))))


# --- validation images ------------------------------------------------------------------


async def add_validation_image(
    db: Queries, run_id: int, step: int, checkpoint_id: int | None, prompt: str, seed: int, path: str,
    scores: ImageScores | None = None,
) -> int:
    measured = {} if scores is None else {"dino": scores.dino, "clip_i": scores.clip_i, "clip_t": scores.clip_t}
    return int(await db.scalar(
        insert(validation_images)
        .values(run_id=run_id, step=step, checkpoint_id=checkpoint_id, prompt=prompt, seed=seed, path=path,
                created_at=utc_now(), **measured)
        .returning(validation_images.c.id)
    ))


async def list_validation_images(db: Queries, run_id: int, step: int | None = None) -> list[ValidationImage]:
    statement = select(validation_images).where(validation_images.c.run_id == run_id)
    if step is not None:
        statement = statement.where(validation_images.c.step == step)
    return _images(await db.all(statement.order_by(validation_images.c.step, validation_images.c.id)))


async def unposted_validation_images(db: Queries, run_id: int) -> list[ValidationImage]:
    """The run's validation images that no front end has posted yet (no message id), by step."""
    return _images(await db.all(
        select(validation_images)
        .where(validation_images.c.run_id == run_id, validation_images.c.message_id.is_(None))
        .order_by(validation_images.c.step, validation_images.c.id)
    ))


async def validation_is_posted(db: Queries, image_id: int) -> bool:
    return await db.scalar(
        select(validation_images.c.id).where(validation_images.c.id == image_id, validation_images.c.message_id.is_not(None))
    ) is not None


async def delete_validation_after(db: Queries, run_id: int, step: int) -> list[ValidationImage]:
    """Forget validation images past `step` (a resumed run renders them again); returns them for file clean-up."""
    rows = await db.all(
        delete(validation_images)
        .where(validation_images.c.run_id == run_id, validation_images.c.step > step)
        .returning(*validation_images.c)
    )
    return _images(rows)


async def set_validation_message(db: Queries, image_id: int, message_id: str) -> None:
    await db.execute(update(validation_images).where(validation_images.c.id == image_id).values(message_id=message_id))


async def set_validation_verdict(db: Queries, image_id: int, flagged: bool) -> None:
    await db.execute(update(validation_images).where(validation_images.c.id == image_id).values(flagged=int(flagged)))


async def validation_image_by_message(db: Queries, message_id: str) -> list[ValidationImage]:
    return _images(await db.all(select(validation_images).where(validation_images.c.message_id == message_id)))


# --- votes ------------------------------------------------------------------------------


async def add_vote(
    db: Queries,
    user_id: str,
    emoji: str,
    *,
    validation_image_id: int | None = None,
    checkpoint_id: int | None = None,
) -> bool:
    """Record a vote on an image or a checkpoint; False when that user already gave that emoji there."""
    # No conflict target: the unique indexes are partial (one per kind of target), and a
    # bare ON CONFLICT DO NOTHING covers both on both databases. RETURNING, not rowcount,
    # tells whether a row went in.
    vote_id = await db.scalar(
        insert_for(db.dialect, votes)
        .values(validation_image_id=validation_image_id, checkpoint_id=checkpoint_id, user_id=user_id, emoji=emoji,
                created_at=utc_now())
        .on_conflict_do_nothing()
        .returning(votes.c.id)
    )
    return vote_id is not None


async def remove_vote(
    db: Queries,
    user_id: str,
    emoji: str,
    *,
    validation_image_id: int | None = None,
    checkpoint_id: int | None = None,
) -> bool:
    def same(column: Any, value: int | None) -> Any:
        return column.is_(None) if value is None else column == value

    result = await db.execute(
        delete(votes).where(
            votes.c.user_id == user_id,
            votes.c.emoji == emoji,
            same(votes.c.validation_image_id, validation_image_id),
            same(votes.c.checkpoint_id, checkpoint_id),
        )
    )
    return result.rowcount > 0


async def vote_tally(db: Queries, run_id: int, emoji: str | None = None) -> dict[int, int]:
    """Votes per checkpoint step of a run: votes on the checkpoint plus votes on validation images of that step.

    Only steps that have a checkpoint count (step 0's "before" images are not a candidate);
    `emoji` restricts the count to one reaction. The bot picks the winner from this.
    """
    voted = checkpoints.alias("voted")
    on_images = (
        select(votes.c.id.label("vote_id"), validation_images.c.step.label("step"))
        .join(validation_images, validation_images.c.id == votes.c.validation_image_id)
        .where(validation_images.c.run_id == run_id)
    )
    on_checkpoints = (
        select(votes.c.id.label("vote_id"), voted.c.step.label("step"))
        .join(voted, voted.c.id == votes.c.checkpoint_id)
        .where(voted.c.run_id == run_id)
    )
    if emoji is not None:
        on_images = on_images.where(votes.c.emoji == emoji)
        on_checkpoints = on_checkpoints.where(votes.c.emoji == emoji)
    ballots = union_all(on_images, on_checkpoints).subquery("ballots")
    rows = await db.all(
        select(checkpoints.c.step, func.count(ballots.c.vote_id).label("count"))
        .select_from(checkpoints.outerjoin(ballots, ballots.c.step == checkpoints.c.step))
        .where(checkpoints.c.run_id == run_id)
        .group_by(checkpoints.c.step)
        .order_by(checkpoints.c.step)
    )
    return {int(row["step"]): int(row["count"]) for row in rows}
