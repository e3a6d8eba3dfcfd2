"""A training's checkpoint is chosen once, when it ends: the bot's announcement of it, however
late and however often replayed, shows that choice and never undoes a `/pick`."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.cogs.train import Train
from bot.job_relay import JobUpdate
from config.settings import Settings
from engine.usecases.scoring.choice import choose_checkpoint
from storage import jobs
from storage.db import Database
from storage.discord_posts import add_discord_job, get_discord_job
from storage.pets import create_pet, get_pet, set_active_checkpoint
from storage.runs import (
    add_checkpoint,
    add_validation_image,
    add_vote,
    finish_run,
    get_run,
    insert_run,
    set_chosen_checkpoint,
)

pytestmark = pytest.mark.both_modes


class Messages:
    """The bot's job messages, reduced to what the training cog sends."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def status(self, target, content: str, **_) -> None:
        return None

    async def send(self, channel_id: str, content: str, files=None, ping: str | None = None) -> None:
        self.sent.append(content)


async def test_a_replayed_announcement_shows_the_choice_made_when_the_training_ended_and_keeps_a_later_pick(
    db: Database, tmp_path: Path
) -> None:
    pet = await create_pet(db, "g", "owner", "Mochi", "cat")
    run_id = await insert_run(db, pet.id, {}, 6)
    checkpoint, image = {}, {}
    for step in (2, 4, 6):
        checkpoint[step] = await add_checkpoint(db, run_id, step, f"runs/{run_id}/c{step}", "a", "b")
        image[step] = await add_validation_image(db, run_id, step, checkpoint[step], "a photo", 42, f"v{step}.png")
    await add_vote(db, "a", "⭐", validation_image_id=image[2])
    await finish_run(db, run_id, "succeeded", 6)
    # The training ends: the worker applies the rule (one vote, for step 2).
    ended = await choose_checkpoint(db, run_id, pet)
    assert ended is not None and ended.checkpoint.step == 2
    job = await jobs.submit_job(db, Settings(data_dir=tmp_path), "train", "g", "owner", {"pet_id": pet.id}, run_id=run_id)
    await jobs.record_event(db, job.id, "finished", {"step": 6})
    await add_discord_job(db, job.id, "g", "channel", "owner", status_message_id="status-1")
    finished = (await jobs.events_after(db, jobs.START))[-1]

    # While the bot is down the owner picks step 6 (as /pick does), and members vote for step 4.
    await set_active_checkpoint(db, pet.id, checkpoint[6])
    await set_chosen_checkpoint(db, run_id, checkpoint[6])
    for user in ("b", "c"):
        await add_vote(db, user, "⭐", validation_image_id=image[4])

    # Back, the bot announces the training; a replay announces it again.
    messages = Messages()
    cog = Train(SimpleNamespace(db=db, job_messages=messages))  # type: ignore[arg-type]
    update = JobUpdate(await get_discord_job(db, job.id), await jobs.get_job(db, job.id), finished)
    for _ in range(2):
        await cog.on_pawtrait_train_finished(update)
    assert len(messages.sent) == 2
    for text in messages.sent:
        assert "**Mochi** is trained! Using the checkpoint from **step 2**: step 2 got the most votes (1 vote)." in text
    assert (await get_pet(db, pet.id)).active_checkpoint_id == checkpoint[6]
    run = await get_run(db, run_id)
    assert run.chosen_checkpoint_id == checkpoint[6]
    assert run.choice is not None and (run.choice.step, run.choice.votes) == (2, {2: 1, 4: 0, 6: 0})
