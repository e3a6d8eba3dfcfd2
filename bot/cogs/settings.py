"""`/settings`: the server's gallery channel, who may train, the step limit, the vote emoji and
what happens to pictures the safety check flags."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import UserError, guild_key
from storage.guild_settings import update_guild_settings

if TYPE_CHECKING:
    from bot.app import PawtraitBot


class Settings(commands.Cog):
    def __init__(self, bot: PawtraitBot) -> None:
        self.bot = bot

    @app_commands.command(name="settings", description="Show or change Pawtrait's settings for this server")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
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
    async def settings(
        self,
        interaction: discord.Interaction,
        gallery: discord.TextChannel | None = None,
        who_may_train: str | None = None,
        max_steps: app_commands.Range[int, 1, 10000] | None = None,
        vote_emoji: app_commands.Range[str, 1, 8] | None = None,
        safety: str | None = None,
    ) -> None:
        if not interaction.permissions.manage_guild:
            raise UserError("Only members with Manage Server can change Pawtrait's settings.")
        if vote_emoji is not None and (vote_emoji.isascii() or " " in vote_emoji):
            raise UserError("The vote emoji must be one emoji, such as ⭐ or 👍.")
        db = self.bot.db
        current = await update_guild_settings(
            db, guild_key(interaction),
            gallery_channel_id=str(gallery.id) if gallery else None,
            who_may_train=who_may_train, max_steps=max_steps, vote_emoji=vote_emoji, safety=safety,
        )
        gallery_text = f"<#{current.gallery_channel_id}>" if current.gallery_channel_id else "not set"
        await interaction.response.send_message(
            f"⚙️ Gallery: {gallery_text} · who may train: {current.who_may_train} · "
            f"max steps: {current.max_steps} · vote emoji: {current.vote_emoji} · safety: {current.safety}",
            ephemeral=True,
        )


async def setup(bot: PawtraitBot) -> None:
    await bot.add_cog(Settings(bot))
