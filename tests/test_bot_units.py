"""The bot's rules that need no Discord: the voting rule, command-sync hashing, settings."""

from __future__ import annotations

import discord
import pytest
from discord import app_commands

from bot.command_sync import command_payload, payload_hash
from bot.settings import BotSettings
from bot.voting import pick_step
from engine.settings import SettingsError


def test_no_votes_keeps_the_last_checkpoint() -> None:
    step, reason = pick_step({2: 0, 4: 0, 6: 0}, owner_steps=set())
    assert step == 6 and "nobody voted" in reason


def test_most_votes_win() -> None:
    step, reason = pick_step({2: 3, 4: 1, 6: 0}, owner_steps={4})
    assert step == 2 and "most votes (3 votes)" in reason


def test_ties_go_to_the_owners_vote_first_then_the_later_step() -> None:
    assert pick_step({2: 2, 4: 2, 6: 1}, owner_steps={2})[0] == 2
    step, reason = pick_step({2: 2, 4: 2, 6: 1}, owner_steps={6})
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
