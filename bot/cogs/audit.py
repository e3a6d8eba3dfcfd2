"""`/audit`: the server's audit log for its moderators, newest first, by member or pet."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import guild_key, pet_choices, require_manager
from bot.formatting import MESSAGE_LIMIT, audit_text
from storage.audit import audit_lines

if TYPE_CHECKING:
    from bot.app import PawtraitBot

MAX_LINES = 25  # more than one message holds anyway


class Audit(commands.Cog):
    def __init__(self, bot: PawtraitBot) -> None:
        self.bot = bot

    @app_commands.command(name="audit", description="Who did what with Pawtrait in this server, newest first")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.describe(member="Only this member's actions", pet="Only actions with this pet")
    async def audit(self, interaction: discord.Interaction, member: discord.Member | None = None,
                    pet: str | None = None) -> None:
        require_manager(interaction)
        lines = await audit_lines(self.bot.db, guild_key(interaction), user_id=str(member.id) if member else None,
                                  pet=pet, limit=MAX_LINES)
        if not lines:
            text = "Nothing recorded" + (" for that filter" if member or pet else "") + " yet."
        else:
            text = "🧾 Newest first:"
            for line in lines:
                shown = audit_text(line)
                if len(text) + 1 + len(shown) > MESSAGE_LIMIT:
                    break
                text += "\n" + shown
        await interaction.response.send_message(text, ephemeral=True)

    @audit.autocomplete("pet")
    async def _pet_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await pet_choices(self.bot.db, interaction, current)


async def setup(bot: PawtraitBot) -> None:
    await bot.add_cog(Audit(bot))
