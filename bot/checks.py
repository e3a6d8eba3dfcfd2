"""Who may do what, and finding the pet a member named: shared by every cog.

Cogs raise `UserError` with a plain-words message; the app's error handler shows it to
the member alone (ephemeral), so a mistake never clutters the channel.
"""

from __future__ import annotations

import discord
from discord import app_commands

from bot.formatting import clip
from storage.db import Queries
from storage.guild_settings import get_guild_settings
from storage.pets import Pet, find_pet, list_pets


class UserError(app_commands.AppCommandError):
    """Something the member can fix; the message says what, in plain words."""


def guild_key(interaction: discord.Interaction) -> str:
    if interaction.guild_id is None:
        raise UserError("Pawtrait works inside a server, not in direct messages.")
    return str(interaction.guild_id)


def is_manager(interaction: discord.Interaction) -> bool:
    """Manage Server (or administrator, which implies it)."""
    return interaction.permissions.manage_guild


async def pet_named(db: Queries, interaction: discord.Interaction, name: str) -> Pet:
    """The server's pet of that name; pets of other servers do not exist here."""
    pet = await find_pet(db, guild_key(interaction), name)
    if pet is None:
        raise UserError(f"There is no pet called **{clip(name, 100)}** in this server. `/pets` lists them; `/teach` adds one.")
    return pet


def require_owner(interaction: discord.Interaction, pet: Pet, doing: str) -> None:
    """Only the pet's owner, or someone with Manage Server, may train, pick or forget it."""
    if pet.owner_id != str(interaction.user.id) and not is_manager(interaction):
        raise UserError(f"**{pet.name}** is <@{pet.owner_id}>'s pet: only they (or someone with Manage Server) can {doing} it.")


async def require_may_train(db: Queries, interaction: discord.Interaction) -> None:
    settings = await get_guild_settings(db, guild_key(interaction))
    if settings.who_may_train == "managers" and not is_manager(interaction):
        raise UserError("In this server only members with Manage Server can start trainings (see `/settings`).")


async def pet_choices(
    db: Queries, interaction: discord.Interaction, typed: str
) -> list[app_commands.Choice[str]]:
    """Autocomplete: the server's pets whose name contains what was typed, the member's own first."""
    if interaction.guild_id is None:
        return []
    pets = await list_pets(db, str(interaction.guild_id))
    mine = str(interaction.user.id)
    pets.sort(key=lambda pet: (pet.owner_id != mine, pet.name.lower()))
    typed = typed.lower().strip()
    return [app_commands.Choice(name=pet.name, value=pet.name) for pet in pets if typed in pet.name.lower()][:25]
