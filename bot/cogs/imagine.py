"""`/imagine`: paint a picture, with a pet of this server when the prompt says `TOK`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import UserError, guild_key, pet_choices, pet_named
from bot.imagine_jobs import queue_generation, require_may_imagine
from engine.generation.request import MAX_COUNT, MAX_STEPS, SIZE_PRESETS, GenerationRequest
from storage.db import Queries
from storage.pets import Pet, list_pets

if TYPE_CHECKING:
    from bot.app import PawtraitBot

# The same word the generation engine replaces with the pet's trigger token.
TOK = re.compile(r"\bTOK\b")


async def default_pet(db: Queries, interaction: discord.Interaction) -> Pet:
    """The member's own most recent pet, else the server's only pet, else ask."""
    guild_id = guild_key(interaction)
    mine = await list_pets(db, guild_id, str(interaction.user.id))
    if mine:
        return mine[0]
    everyone = await list_pets(db, guild_id)
    if len(everyone) == 1:
        return everyone[0]
    if not everyone:
        raise UserError("This server has no pets yet: `/teach` one, `/train` it, then imagine with `TOK`.")
    raise UserError("`TOK` stands for a pet, and this server has several: choose one with the `pet` option.")


class Imagine(commands.Cog):
    def __init__(self, bot: "PawtraitBot") -> None:
        self.bot = bot

    @app_commands.command(name="imagine", description="Paint a picture; write TOK for your pet, e.g. 'a photo of TOK cat on the moon'")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="What to paint; TOK is the pet",
        pet="Which pet TOK means (default: your most recent pet)",
        count=f"How many images (1-{MAX_COUNT})",
        seed="Seed for a repeatable picture (default: random)",
        size="Shape of the picture",
        negative="What to keep out of the picture",
        steps="Denoising steps (default 30)",
    )
    @app_commands.choices(size=[app_commands.Choice(name=size, value=size) for size in SIZE_PRESETS])
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 1000],
        pet: str | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] = 1,
        seed: app_commands.Range[int, 0, 2**32 - 1] | None = None,
        size: str = "1:1",
        negative: str = "",
        steps: app_commands.Range[int, 1, MAX_STEPS] = 30,
    ) -> None:
        chosen: Pet | None = None
        db = self.bot.db
        if pet is not None:
            chosen = await pet_named(db, interaction, pet)
        elif TOK.search(prompt):
            chosen = await default_pet(db, interaction)
        if chosen is not None:
            await require_may_imagine(db, interaction, chosen)
        request = GenerationRequest(
            prompt=prompt, negative_prompt=negative, seed=seed, steps=steps, size=size, count=count
        )
        await queue_generation(self.bot, interaction, request, chosen)

    @imagine.autocomplete("pet")
    async def _pet_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        db = self.bot.db
        return await pet_choices(db, interaction, current)


async def setup(bot: "PawtraitBot") -> None:
    await bot.add_cog(Imagine(bot))
