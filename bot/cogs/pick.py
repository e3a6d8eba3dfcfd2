"""Choosing a pet's checkpoint: ⭐ votes on validation images, and `/pick` for the owner.

Votes come from raw reaction events, which carry only ids: the validation image is found
by its message id in the database, so votes on images posted before a restart still count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import UserError, pet_choices, pet_named, require_owner
from storage.guild_settings import get_guild_settings
from storage.pets import set_active_checkpoint
from storage.runs import add_vote, list_checkpoints, list_runs, remove_vote, set_chosen_checkpoint, validation_image_by_message

if TYPE_CHECKING:
    from bot.app import PawtraitBot


class Pick(commands.Cog):
    def __init__(self, bot: "PawtraitBot") -> None:
        self.bot = bot

    @app_commands.command(name="pick", description="Choose which training step your pet uses from now on")
    @app_commands.guild_only()
    @app_commands.describe(pet="Which pet", step="The step of a saved checkpoint (see the training thread)")
    async def pick(self, interaction: discord.Interaction, pet: str, step: app_commands.Range[int, 1]) -> None:
        db = self.bot.db
        found = await pet_named(db, interaction, pet)
        require_owner(interaction, found, "choose a checkpoint for")
        for run in await list_runs(db, found.id):  # newest first
            checkpoints = {c.step: c for c in await list_checkpoints(db, run.id)}
            if step in checkpoints:
                await set_active_checkpoint(db, found.id, checkpoints[step].id)
                await set_chosen_checkpoint(db, run.id, checkpoints[step].id)
                break
        else:
            steps = sorted({c.step for run in await list_runs(db, found.id) for c in await list_checkpoints(db, run.id)})
            have = ", ".join(map(str, steps)) if steps else "none yet"
            raise UserError(f"**{found.name}** has no checkpoint at step {step}. Saved steps: {have}.")
        await interaction.response.send_message(
            f"📍 **{found.name}** now uses the checkpoint from step {step} (training #{run.id}), as <@{interaction.user.id}> chose.",
            allowed_mentions=discord.AllowedMentions.none(),
        )

    @pick.autocomplete("pet")
    async def _pet_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        db = self.bot.db
        return await pet_choices(db, interaction, current)

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self._vote(payload, add=True)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self._vote(payload, add=False)

    async def _vote(self, payload: discord.RawReactionActionEvent, add: bool) -> None:
        if payload.guild_id is None or (self.bot.user and payload.user_id == self.bot.user.id):
            return
        db = self.bot.db
        images = await validation_image_by_message(db, str(payload.message_id))
        if not images:
            return
        emoji = (await get_guild_settings(db, str(payload.guild_id))).vote_emoji
        if str(payload.emoji) != emoji:
            return
        for image in images:
            if image.step == 0:
                continue  # the "before training" images are not a candidate
            change = add_vote if add else remove_vote
            await change(db, str(payload.user_id), emoji, validation_image_id=image.id)


async def setup(bot: "PawtraitBot") -> None:
    await bot.add_cog(Pick(bot))
