"""The bot's rules that need no Discord: the voting rule (without scores), command-sync hashing, settings."""

from __future__ import annotations

import discord
import pytest
from discord import app_commands

from bot.command_sync import command_payload, payload_hash
from bot.settings import BotSettings
from config.settings import SettingsError
from engine.usecases.scoring.choice import pick_step
from storage.scores import RunScores

UNSCORED = RunScores(reference=None, steps=[])


def test_without_votes_or_scores_the_last_checkpoint_is_kept() -> None:
    step, reason = pick_step({2: 0, 4: 0, 6: 0}, set(), UNSCORED, None)
    assert step == 6 and "nobody voted and there are no scores" in reason


def test_most_votes_win() -> None:
    step, reason = pick_step({2: 3, 4: 1, 6: 0}, {4}, UNSCORED, None)
    assert step == 2 and "most votes (3 votes)" in reason


def test_unscored_ties_go_to_the_owners_vote_first_then_the_later_step() -> None:
    assert pick_step({2: 2, 4: 2, 6: 1}, {2}, UNSCORED, None)[0] == 2
    step, reason = pick_step({2: 2, 4: 2, 6: 1}, {6}, UNSCORED, None)
    assert step == 4 and "later step" in reason  # the owner's vote went to a step that did not tie


def tree_with(description: str) -> app_commands.CommandTree:
    tree = app_commands.CommandTree(discord.Client(intents=discord.Intents.none()))

    @tree.command(name="imagine", description=description)
    async def imagine(interaction: discord.Interaction, prompt: str) -> None:
        pass

    return tree


def test_the_sync_hash_changes_only_when_commands_change() -> None:
    first = payload_hash(command_payload(tree_with("Paint"), None), "global")
    assert first == payload_hash(command_payload(tree_with("Paint"), None), "global")
    assert first != payload_hash(command_payload(tree_with("Paint a picture"), None), "global")
    assert first != payload_hash(command_payload(tree_with("Paint"), None), "guild:1")


def test_endpoints_and_dev_guild_are_checked() -> None:
    settings = BotSettings.from_env({
        "DISCORD_TOKEN": "t", "DISCORD_API_BASE": "http://127.0.0.1:9/api/v10/",
        "DISCORD_GATEWAY_URL": "ws://127.0.0.1:9/gateway", "PAWTRAIT_DEV_GUILD": "123",
    })
    assert settings.api_base == "http://127.0.0.1:9/api/v10" and settings.dev_guild == 123
    with pytest.raises(SettingsError, match="DISCORD_GATEWAY_URL"):
        BotSettings.from_env({"DISCORD_GATEWAY_URL": "http://not-a-websocket"})
    with pytest.raises(SettingsError, match="PAWTRAIT_DEV_GUILD"):
        BotSettings.from_env({"PAWTRAIT_DEV_GUILD": "my server"})


async def test_votes_in_the_database_choose_and_activate_a_checkpoint(db) -> None:
    from engine.usecases.scoring.choice import choose_checkpoint
    from storage.pets import create_pet, get_pet
    from storage.runs import add_checkpoint, add_validation_image, add_vote, insert_run

    pet = await create_pet(db, "g1", "owner", "Mochi", "cat")
    run_id = await insert_run(db, pet.id, {}, 6)
    image_id = {}
    for step in (0, 2, 4, 6):
        checkpoint_id = None if step == 0 else await add_checkpoint(db, run_id, step, f"runs/{run_id}/c{step}", "a", "b")
        image_id[step] = await add_validation_image(db, run_id, step, checkpoint_id, "a photo", 42, f"v{step}.png")
    # Steps 2 and 4 tie with two votes each; the owner voted for 2; a thumbs-up does not count.
    for user, step in (("a", 2), ("owner", 2), ("b", 4), ("c", 4), ("d", 6)):
        await add_vote(db, user, "⭐", validation_image_id=image_id[step])
    await add_vote(db, "e", "👍", validation_image_id=image_id[6])
    await add_vote(db, "f", "⭐", validation_image_id=image_id[0])  # "before" images are no candidate

    choice = await choose_checkpoint(db, run_id, pet)  # without scores, ties go to the owner's vote
    assert choice is not None and choice.checkpoint.step == 2 and "owner's vote" in choice.reason
    assert (await get_pet(db, pet.id)).active_checkpoint_id == choice.checkpoint.id


async def test_guild_settings_and_relay_position_persist(db) -> None:
    from storage.discord_posts import relay_position, set_relay_position
    from storage.guild_settings import (
        get_guild_settings,
        others_may_imagine,
        set_others_may_imagine,
        update_guild_settings,
    )
    from storage.jobs import START, EventPosition
    from storage.pets import create_pet

    assert (await get_guild_settings(db, "g1")).vote_emoji == "⭐"
    await update_guild_settings(db, "g1", gallery_channel_id="55")
    changed = await update_guild_settings(db, "g1", who_may_train="managers")
    assert (changed.gallery_channel_id, changed.who_may_train, changed.max_steps) == ("55", "managers", 2000)
    assert (await get_guild_settings(db, "g2")).gallery_channel_id is None
    pet = await create_pet(db, "g1", "owner", "Mochi", "cat")
    assert await others_may_imagine(db, pet.id)
    await set_others_may_imagine(db, pet.id, False)
    assert not await others_may_imagine(db, pet.id)
    assert await relay_position(db) is None
    await set_relay_position(db, EventPosition(tx=7, id=41))
    await set_relay_position(db, EventPosition(tx=9, id=40))  # a later transaction, an earlier id
    assert await relay_position(db) == EventPosition(tx=9, id=40) > EventPosition(tx=7, id=41)
    await set_relay_position(db, START)
    assert await relay_position(db) == START


async def test_the_bot_attaches_local_copies_of_stored_files_and_skips_deleted_ones(
    settings, request: pytest.FixtureRequest
) -> None:
    """Distributed: pictures live in the bucket; the bot fetches copies into this host's cache to
    attach them, and leaves out a picture deleted meanwhile (retention, /forget) instead of failing."""
    from bot.app import PawtraitBot

    from conftest import distributed

    shared = distributed(settings, request)
    bot = PawtraitBot(shared, BotSettings.from_env({"DISCORD_TOKEN": "t"}))
    kept, deleted = "generations/abcd1234/1-seed-1.png", "generations/abcd1234/2-seed-2.png"
    for key in (kept, deleted):
        await bot.store.put_bytes(key, f"picture {key}".encode())
    await bot.store.delete([deleted])
    [copy] = await bot.local_copies([kept, deleted])
    assert copy.read_bytes() == f"picture {kept}".encode()
    assert copy.is_relative_to(shared.data_dir)  # this host's cache, not the bucket
    assert await bot.local_copies([deleted]) == []


def test_an_audit_line_shows_a_long_prompt_cut_and_its_markdown_inert() -> None:
    from bot.formatting import MESSAGE_LIMIT, audit_text, clip
    from storage.audit import AuditLine

    line = AuditLine(7, "g1", "42", "2026-12-07T10:00:00.000Z", "imagine", "prompt allowed",
                     prompt="**bold** " + "cat " * 500, pet="Mochi", seed=3, job_id=9)
    text = audit_text(line)
    assert text.startswith("`#7` <t:1796637600:f> <@42> **imagine** · prompt allowed · pet Mochi · seed 3 · job #9")
    assert "\\*\\*bold\\*\\*" in text and len(text) < 300 and text.endswith("…”")
    assert len(clip("x" * 5000, MESSAGE_LIMIT)) == MESSAGE_LIMIT and clip("short") == "short"
