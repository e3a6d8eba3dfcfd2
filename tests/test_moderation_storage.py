"""Moderation's storage on SQLite and on PostgreSQL: the audit log (filters, order, pruning),
a server's block words and denied members, its moderators' channel and gallery copies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.gpu.worker import chores
from storage.audit import audit_lines, audit_lines_of_job, record_audit
from storage.db import Database
from storage.dialects import utc_now_minus
from storage.discord_posts import set_gallery_message
from storage.generations import get_generation, record_generation
from storage.guild_settings import get_guild_settings, set_mod_channel, update_guild_settings
from storage.moderation import (
    MAX_BLOCK_WORDS,
    TooManyBlockWords,
    add_block_word,
    allow_member,
    deny_member,
    is_denied,
    list_block_words,
    remove_block_word,
)
from storage.schema import audit_log

pytestmark = pytest.mark.both_modes


async def test_the_audit_log_lists_a_servers_lines_newest_first_by_member_or_pet(db: Database) -> None:
    await record_audit(db, "g1", "alice", "teach", "done", pet="Mochi")
    await record_audit(db, "g1", "bob", "imagine", "prompt refused (explicit)", prompt="p0rn", detail="refused")
    await record_audit(db, "g1", "alice", "imagine", "done", prompt="TOK on the moon", pet="Mochi",
                       checkpoint_id=3, seed=2**32 - 1, job_id=12)
    await record_audit(db, "g2", "carol", "train", "done", pet="Rex")
    lines = await audit_lines(db, "g1")
    assert [(line.user_id, line.command) for line in lines] == [("alice", "imagine"), ("bob", "imagine"), ("alice", "teach")]
    newest = lines[0]
    assert (newest.prompt, newest.pet, newest.checkpoint_id, newest.seed, newest.job_id) == (
        "TOK on the moon", "Mochi", 3, 2**32 - 1, 12)
    assert newest.created_at.endswith("Z")
    assert [line.verdict for line in await audit_lines(db, "g1", user_id="bob")] == ["prompt refused (explicit)"]
    assert [line.command for line in await audit_lines(db, "g1", pet="mochi")] == ["imagine", "teach"]
    assert [line.command for line in await audit_lines(db, "g1", user_id="alice", pet="MOCHI", limit=1)] == ["imagine"]
    assert not await audit_lines(db, "g1", pet="Rex")  # another server's pet
    assert len(await audit_lines(db, None)) == 4  # every server (pawtrait audit)
    # A line written late for an action taken earlier (a slow command) is listed where the action was.
    late = await record_audit(db, "g1", "carol", "train", "done", at=datetime.now(UTC) - timedelta(minutes=1))
    assert [line.id for line in await audit_lines(db, "g1")][-2:] == [lines[-1].id, late]  # the oldest
    assert (await audit_lines(db, "g1", user_id="carol"))[0].created_at.endswith("Z")
    assert [line.id for line in await audit_lines_of_job(db, "g1", 12)] == [newest.id]
    assert await audit_lines_of_job(db, "g1", 99) == [] and await audit_lines_of_job(db, "g2", 12) == []
    # The worker's verdict on what the job painted follows the command's line.
    verdict = await record_audit(db, "g1", "alice", "picture screening", "passed", job_id=12)
    assert [line.id for line in await audit_lines_of_job(db, "g1", 12)] == [newest.id, verdict]


async def test_old_audit_lines_are_pruned_by_the_chore(db: Database) -> None:
    old = await record_audit(db, "g1", "alice", "imagine", "done")
    kept = await record_audit(db, "g1", "alice", "pick", "done")
    await db.execute(audit_log.update().where(audit_log.c.id == old).values(created_at=utc_now_minus(91 * 86400)))
    assert await chores.prune_audit(db, 0) == 0  # 0 days keeps everything
    assert await chores.prune_audit(db, 90) == 1
    assert [line.id for line in await audit_lines(db, "g1")] == [kept]
    newer = await record_audit(db, "g1", "bob", "imagine", "done")
    assert newer > kept  # a pruned line's id is never reused


async def test_block_words_are_per_server_and_compared_without_case(db: Database) -> None:
    assert await add_block_word(db, "g1", "Moon", "mod")
    assert not await add_block_word(db, "g1", "moon", "mod")
    assert await add_block_word(db, "g1", "hot   dog", "mod")
    assert await add_block_word(db, "g2", "moon", "other-mod")
    assert await list_block_words(db, "g1") == ["Moon", "hot dog"]
    assert await remove_block_word(db, "g1", "MOON") and not await remove_block_word(db, "g1", "moon")
    assert await list_block_words(db, "g1") == ["hot dog"] and await list_block_words(db, "g2") == ["moon"]


async def test_a_servers_block_list_has_a_limit(db: Database) -> None:
    for number in range(MAX_BLOCK_WORDS):
        await add_block_word(db, "g1", f"word{number}", "mod")
    with pytest.raises(TooManyBlockWords, match="remove some first"):
        await add_block_word(db, "g1", "one more", "mod")


async def test_a_member_is_denied_in_one_server_until_allowed(db: Database) -> None:
    await deny_member(db, "g1", "bob", "mod")
    await deny_member(db, "g1", "bob", "mod")  # twice is once
    assert await is_denied(db, "g1", "bob") and not await is_denied(db, "g2", "bob")
    assert await allow_member(db, "g1", "bob") and not await allow_member(db, "g1", "bob")
    assert not await is_denied(db, "g1", "bob")


async def test_the_mod_channel_is_set_and_cleared_without_touching_other_settings(db: Database) -> None:
    await update_guild_settings(db, "g1", gallery_channel_id="55", max_steps=700)
    assert (await set_mod_channel(db, "g1", "77")).mod_channel_id == "77"
    settings = await get_guild_settings(db, "g1")
    assert (settings.gallery_channel_id, settings.max_steps, settings.mod_channel_id) == ("55", 700, "77")
    assert (await set_mod_channel(db, "g1", None)).mod_channel_id is None
    assert (await set_mod_channel(db, "g3", "9")).max_steps == 2000  # a server without settings gets the defaults
    assert (await update_guild_settings(db, "g3", vote_emoji="🐾")).mod_channel_id == "9"


async def test_a_generation_remembers_its_gallery_copy(db: Database) -> None:
    generation = await record_generation(
        db, ["generations/1/0.png"], guild_id="g1", pet_id=None, checkpoint_id=None, prompt="p",
        negative_prompt="", seed=1, steps=1, guidance=1.0, width=64, height=64, lora_scale=1.0, requested_by="alice",
    )
    assert generation.gallery_message_id is None
    await set_gallery_message(db, generation.id, "gallery", "m1")
    found = await get_generation(db, generation.id)
    assert (found.gallery_channel_id, found.gallery_message_id) == ("gallery", "m1")
