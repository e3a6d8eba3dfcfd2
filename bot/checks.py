"""Who may do what, and finding the pet a member named: shared by every cog.

Cogs raise `UserError` with a plain-words message; the app's error handler shows it to
the member alone (ephemeral), so a mistake never clutters the channel.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from bot import audit_log
from bot.formatting import echo
from bot.safety import age_restricted
from storage.db import Queries
from storage.guild_settings import get_guild_settings
from storage.moderation import is_denied
from storage.pets import Pet, find_pet, list_pets

DENIED = (
    "A moderator of this server has stopped you from using Pawtrait here. "
    "If you think that is a mistake, ask one of them (someone with Manage Server)."
)


class UserError(app_commands.AppCommandError):
    """Something the member can fix; the message says what, in plain words."""


def guild_key(interaction: discord.Interaction) -> str:
    if interaction.guild_id is None:
        raise UserError("Pawtrait works inside a server, not in direct messages.")
    return str(interaction.guild_id)


def is_manager(interaction: discord.Interaction) -> bool:
    """Manage Server (or administrator, which implies it)."""
    return interaction.permissions.manage_guild


def require_manager(interaction: discord.Interaction) -> None:
    """Checked again in code: a command's default permission is only what a server starts with."""
    if not is_manager(interaction):
        raise UserError("Only members with Manage Server can do that.")


def in_age_restricted_channel(interaction: discord.Interaction) -> bool:
    """An age-restricted channel, or a thread of one (discord.py's Thread.is_nsfw follows its parent)."""
    return age_restricted(interaction.channel)


async def member_allowed(interaction: discord.Interaction) -> bool:
    """The one check for members a moderator denied (`/settings deny`): the command tree and
    every button run it first. A denied member is told so in plain words; their attempt is recorded."""
    if interaction.guild_id is None:
        return True
    bot: Any = interaction.client
    if not await is_denied(bot.db, str(interaction.guild_id), str(interaction.user.id)):
        return True
    if interaction.type is not discord.InteractionType.autocomplete:  # autocomplete cannot show a message
        await audit_log.record(bot, interaction, "denied")  # first: the line is there once the member sees why
        await interaction.response.send_message(DENIED, ephemeral=True)
    return False


class MemberCheck:
    """Mixed into every button (a discord.py dynamic item): names its audit line, runs the same
    check as the commands', then answers whatever `act` ends in as a command's outcome is answered:
    one audit line, and a refusal or an unexpected failure told to the member in plain words
    (discord.py would only log a button's exception, and the member would see "interaction failed")."""

    audit_command: str  # e.g. 'imagine reroll'

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        audit_log.begin(interaction, self.audit_command)
        return await member_allowed(interaction)

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: Any = interaction.client
        try:
            await self.act(interaction)
        except Exception as error:  # noqa: BLE001 - answered and recorded as a command's error is
            await bot.on_app_command_error(interaction, error)
            return
        await audit_log.record(bot, interaction, "done")

    async def act(self, interaction: discord.Interaction) -> None:
        """What the button does; raise `UserError` to refuse."""
        raise NotImplementedError


async def pet_named(db: Queries, interaction: discord.Interaction, name: str) -> Pet:
    """The server's pet of that name; pets of other servers do not exist here."""
    pet = await find_pet(db, guild_key(interaction), name)
    if pet is None:
        raise UserError(f"There is no pet called **{echo(name, 100)}** in this server. `/pets` lists them; `/teach` adds one.")
    return pet


def require_owner(interaction: discord.Interaction, pet: Pet, doing: str) -> None:
    """Only the pet's owner, or someone with Manage Server, may train, pick or forget it."""
    if pet.owner_id != str(interaction.user.id) and not is_manager(interaction):
        raise UserError(f"**{pet.name}** is <@{pet.owner_id}>'s pet: only they (or someone with Manage Server) can {doing} it.")


async def require_may_train(db: Queries, interaction: discord.Interaction) -> None:
    settings = await get_guild_settings(db, guild_key(interaction))
    if settings.who_may_train == "managers" and not is_manager(interaction):
        raise UserError("In this server only members with Manage Server can start trainings (`/settings change who_may_train:` sets it).")


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
