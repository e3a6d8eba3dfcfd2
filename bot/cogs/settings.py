"""`/settings`: a server's Pawtrait settings and its moderators' tools, one subcommand each.

Discord does not let a command be both a plain command and a group, so everything is a
subcommand: `show`, `change` (gallery, who may train, step limit, vote emoji, safety),
`block-words add|remove|list`, `deny`, `allow` and `mod-channel`. The group's default
permission is Manage Server (a server can change that in its integration settings), so
every subcommand checks Manage Server again in code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import UserError, guild_key, require_manager
from bot.formatting import MESSAGE_LIMIT, clip
from engine.usecases.moderation.prompts import block_word_problem
from storage.guild_settings import GuildSettings, get_guild_settings, set_mod_channel, update_guild_settings
from storage.moderation import (
    TooManyBlockWords,
    add_block_word,
    allow_member,
    deny_member,
    list_block_words,
    remove_block_word,
)

if TYPE_CHECKING:
    from bot.app import PawtraitBot



def _channel(channel_id: str | None) -> str:
    return f"<#{channel_id}>" if channel_id else "not set"


def settings_text(current: GuildSettings) -> str:
    return (
        f"⚙️ Gallery: {_channel(current.gallery_channel_id)} · who may train: {current.who_may_train} · "
        f"max steps: {current.max_steps} · vote emoji: {current.vote_emoji} · safety: {current.safety} · "
        f"moderators' channel: {_channel(current.mod_channel_id)}"
    )


async def _answer(interaction: discord.Interaction, text: str) -> None:
    """Privately, never pinging: the text may echo what a member typed."""
    await interaction.response.send_message(clip(text, MESSAGE_LIMIT), ephemeral=True)


class Settings(commands.Cog):
    settings = app_commands.Group(
        name="settings", description="Pawtrait's settings and moderation tools for this server",
        guild_only=True, default_permissions=discord.Permissions(manage_guild=True),
    )
    block_words = app_commands.Group(
        name="block-words", description="Words this server refuses in prompts", parent=settings,
    )

    def __init__(self, bot: PawtraitBot) -> None:
        self.bot = bot

    @settings.command(name="show", description="Show this server's Pawtrait settings")
    async def show(self, interaction: discord.Interaction) -> None:
        require_manager(interaction)
        await _answer(interaction, settings_text(await get_guild_settings(self.bot.db, guild_key(interaction))))

    @settings.command(name="change", description="Change the gallery channel, who may train, the step limit, the vote emoji or the safety policy")
    @app_commands.describe(
        gallery="Channel where 📌 shares pictures",
        who_may_train="Who may start trainings",
        max_steps="The most steps one training may ask for",
        vote_emoji="The reaction that votes for a validation image",
        safety="Pictures the safety check flags: standard shows them only in age-restricted channels, strict never",
    )
    @app_commands.choices(who_may_train=[
        app_commands.Choice(name="everyone (for their own pets)", value="everyone"),
        app_commands.Choice(name="only members with Manage Server", value="managers"),
    ])
    @app_commands.choices(safety=[
        app_commands.Choice(name="standard: only in age-restricted channels, as spoilers", value="standard"),
        app_commands.Choice(name="strict: never posted", value="strict"),
    ])
    async def change(
        self,
        interaction: discord.Interaction,
        gallery: discord.TextChannel | None = None,
        who_may_train: str | None = None,
        max_steps: app_commands.Range[int, 1, 10000] | None = None,
        vote_emoji: app_commands.Range[str, 1, 8] | None = None,
        safety: str | None = None,
    ) -> None:
        require_manager(interaction)
        if all(option is None for option in (gallery, who_may_train, max_steps, vote_emoji, safety)):
            raise UserError("Nothing to change: give at least one option. `/settings show` shows the settings now.")
        if vote_emoji is not None and (vote_emoji.isascii() or " " in vote_emoji):
            raise UserError("The vote emoji must be one emoji, such as ⭐ or 👍.")
        current = await update_guild_settings(
            self.bot.db, guild_key(interaction),
            gallery_channel_id=str(gallery.id) if gallery else None,
            who_may_train=who_may_train, max_steps=max_steps, vote_emoji=vote_emoji, safety=safety,
        )
        await _answer(interaction, settings_text(current))

    @settings.command(name="mod-channel", description="Where 🚩 reports go (leave out the channel to stop posting them)")
    @app_commands.describe(channel="The moderators' channel")
    async def mod_channel(self, interaction: discord.Interaction, channel: discord.TextChannel | None = None) -> None:
        require_manager(interaction)
        await set_mod_channel(self.bot.db, guild_key(interaction), str(channel.id) if channel else None)
        if channel is None:
            await _answer(interaction, "🚩 Reports are recorded in `/audit` but no longer posted to a channel.")
        else:
            await _answer(interaction, f"🚩 Reports of pictures now go to <#{channel.id}>.")

    @settings.command(name="deny", description="Stop a member from using Pawtrait in this server")
    @app_commands.describe(member="Who may no longer use Pawtrait here")
    async def deny(self, interaction: discord.Interaction, member: discord.Member) -> None:
        require_manager(interaction)
        if member.bot:
            raise UserError("Bots cannot use Pawtrait anyway.")
        if member.id == interaction.user.id:
            raise UserError("You cannot deny yourself.")
        permissions = member.resolved_permissions or member.guild_permissions
        if permissions.manage_guild:
            raise UserError(f"<@{member.id}> has Manage Server, so they could allow themselves again: remove that first.")
        await deny_member(self.bot.db, guild_key(interaction), str(member.id), str(interaction.user.id))
        await _answer(interaction, f"⛔ <@{member.id}> can no longer use Pawtrait in this server (`/settings allow` undoes it).")

    @settings.command(name="allow", description="Let a denied member use Pawtrait again")
    @app_commands.describe(member="Who may use Pawtrait here again")
    async def allow(self, interaction: discord.Interaction, member: discord.Member) -> None:
        require_manager(interaction)
        if not await allow_member(self.bot.db, guild_key(interaction), str(member.id)):
            raise UserError(f"<@{member.id}> was not denied; nothing changed.")
        await _answer(interaction, f"✅ <@{member.id}> can use Pawtrait in this server again.")

    @block_words.command(name="add", description="Refuse prompts with this word or phrase in this server")
    @app_commands.describe(word="A word or phrase; matched as whole words, in any case and spelling trick")
    async def block_word_add(self, interaction: discord.Interaction, word: app_commands.Range[str, 1, 100]) -> None:
        require_manager(interaction)
        if problem := block_word_problem(word):
            raise UserError(problem)
        try:
            added = await add_block_word(self.bot.db, guild_key(interaction), word, str(interaction.user.id))
        except TooManyBlockWords as error:
            raise UserError(str(error)) from None
        shown = discord.utils.escape_markdown(" ".join(word.split()))
        await _answer(interaction, f"🚫 Prompts with “{shown}” are now refused here." if added
                      else f"“{shown}” was blocked already.")

    @block_words.command(name="remove", description="Stop refusing a word or phrase")
    @app_commands.describe(word="The word or phrase to allow again")
    async def block_word_remove(self, interaction: discord.Interaction, word: app_commands.Range[str, 1, 100]) -> None:
        require_manager(interaction)
        shown = discord.utils.escape_markdown(" ".join(word.split()))
        if not await remove_block_word(self.bot.db, guild_key(interaction), word):
            raise UserError(clip(f"“{shown}” is not on this server's list; `/settings block-words list` shows it.", MESSAGE_LIMIT))
        await _answer(interaction, f"“{shown}” is allowed again.")

    @block_words.command(name="list", description="The words this server refuses in prompts")
    async def block_word_list(self, interaction: discord.Interaction) -> None:
        require_manager(interaction)
        words = await list_block_words(self.bot.db, guild_key(interaction))
        if not words:
            await _answer(interaction, "This server blocks no words of its own (the built-in screening still applies).")
            return
        await _answer(interaction, f"🚫 Blocked here ({len(words)}): "
                      + ", ".join(f"“{discord.utils.escape_markdown(word)}”" for word in words))


async def setup(bot: PawtraitBot) -> None:
    await bot.add_cog(Settings(bot))
