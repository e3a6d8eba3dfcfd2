"""Buttons that keep working after a restart.

Each button's custom_id carries what it acts on (`pawtrait:gen:<action>:<generation id>`,
`pawtrait:vary:<generation id>:<image>`, `pawtrait:forget:<pet id>:<member id>`); discord.py's
dynamic items parse it back, so no view has to stay in memory and old messages' buttons
still work after the bot restarts.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import discord

from bot.checks import UserError, is_manager
from bot.imagine_jobs import queue_generation, require_may_imagine
from engine.generation.request import DEFAULT_VARIATION_STRENGTH, GenerationRequest
from storage.discord_posts import job_for_generation
from storage.generations import Generation, get_generation
from storage.guild_settings import get_guild_settings
from storage.jobs import get_job
from storage.pet_deletion import PetBusy, PetFootprint, forget_pet
from storage.pets import Pet, get_pet

if TYPE_CHECKING:
    from bot.app import PawtraitBot

_ACTIONS = {"reroll": ("🔁", "Reroll"), "share": ("📌", "Share"), "delete": ("🗑️", "Delete")}


class GenerationButton(discord.ui.DynamicItem[discord.ui.Button], template=r"pawtrait:gen:(?P<action>reroll|share|delete):(?P<id>\d+)"):
    def __init__(self, action: str, generation_id: int) -> None:
        emoji, label = _ACTIONS[action]
        style = discord.ButtonStyle.danger if action == "delete" else discord.ButtonStyle.secondary
        super().__init__(
            discord.ui.Button(label=label, emoji=emoji, style=style, custom_id=f"pawtrait:gen:{action}:{generation_id}")
        )
        self.action = action
        self.generation_id = generation_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]):
        return cls(match["action"], int(match["id"]))

    async def callback(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        bot: PawtraitBot = interaction.client  # type: ignore[assignment]
        try:
            if self.action == "reroll":
                await self._reroll(bot, interaction)
            elif self.action == "share":
                await self._share(bot, interaction)
            else:
                await self._delete(bot, interaction)
        except UserError as error:
            await bot.on_app_command_error(interaction, error)

    async def _generation(self, bot: "PawtraitBot", interaction: discord.Interaction) -> Generation:
        return await _generation_here(bot, interaction, self.generation_id)

    async def _reroll(self, bot: "PawtraitBot", interaction: discord.Interaction) -> None:
        """The same request with a new random seed, queued for whoever pressed the button."""
        generation = await self._generation(bot, interaction)
        request, pet = await _request_again(bot, interaction, generation, "reroll them")
        await queue_generation(bot, interaction, request, pet)

    async def _share(self, bot: "PawtraitBot", interaction: discord.Interaction) -> None:
        generation = await self._generation(bot, interaction)
        db = bot.db
        settings = await get_guild_settings(db, str(interaction.guild_id))
        if settings.gallery_channel_id is None:
            raise UserError("This server has no gallery channel yet; someone with Manage Server can set one with `/settings gallery:`.")
        await interaction.response.defer(ephemeral=True, thinking=True)
        gallery = bot.get_channel(int(settings.gallery_channel_id)) or await bot.fetch_channel(int(settings.gallery_channel_id))
        files = [discord.File(path) for path in await bot.local_copies(generation.files)]
        source = f" · [original]({interaction.message.jump_url})" if interaction.message else ""
        await gallery.send(  # type: ignore[union-attr]
            f"📌 **{generation.prompt}** by <@{generation.requested_by}>, shared by <@{interaction.user.id}> "
            f"· seed {generation.seed}{source}",
            files=files,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        await interaction.edit_original_response(content=f"Shared to <#{settings.gallery_channel_id}>.")

    async def _delete(self, bot: "PawtraitBot", interaction: discord.Interaction) -> None:
        generation = await self._generation(bot, interaction)
        if generation.requested_by != str(interaction.user.id) and not interaction.permissions.manage_messages:
            raise UserError("Only the member who asked for these images (or a moderator) can delete them.")
        await interaction.response.defer(ephemeral=True)
        if interaction.message is not None:
            await interaction.message.delete()


class VariationButton(discord.ui.DynamicItem[discord.ui.Button], template=r"pawtrait:vary:(?P<id>\d+):(?P<image>\d+)"):
    """V1…V4 (as in Midjourney): new pictures close to one image, same prompt and pet, new seed."""

    def __init__(self, generation_id: int, image: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=f"V{image}", style=discord.ButtonStyle.secondary, row=1,
                custom_id=f"pawtrait:vary:{generation_id}:{image}",
            )
        )
        self.generation_id = generation_id
        self.image = image

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]):
        return cls(int(match["id"]), int(match["image"]))

    async def callback(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        bot: PawtraitBot = interaction.client  # type: ignore[assignment]
        try:
            generation = await _generation_here(bot, interaction, self.generation_id)
            request, pet = await _request_again(bot, interaction, generation, "make variations of them")
            request.source_generation_id = generation.id
            request.source_image = self.image
            request.variation_strength = DEFAULT_VARIATION_STRENGTH
            await queue_generation(bot, interaction, request, pet)
        except UserError as error:
            await bot.on_app_command_error(interaction, error)


async def _generation_here(bot: "PawtraitBot", interaction: discord.Interaction, generation_id: int) -> Generation:
    """The generation a button acts on, if it still exists in this server."""
    db = bot.db
    generation = await get_generation(db, generation_id)
    if generation is None or generation.guild_id != str(interaction.guild_id):
        raise UserError("These images were deleted (their pet may have been forgotten).")
    return generation


async def _request_again(
    bot: "PawtraitBot", interaction: discord.Interaction, generation: Generation, what: str
) -> tuple[GenerationRequest, Pet | None]:
    """The request that made `generation` (new random seed) and its pet, if the presser may use that pet."""
    db = bot.db
    job_id = await job_for_generation(db, generation.id)
    job = await get_job(db, job_id) if job_id else None
    pet = await get_pet(db, generation.pet_id) if generation.pet_id else None
    if pet is not None:
        await require_may_imagine(db, interaction, pet)
    if job is None:
        raise UserError(f"I no longer know how these images were made, so I can't {what}.")
    request = GenerationRequest.from_dict(job.payload["request"])
    request.seed = None
    return request, pet


def generation_view(generation_id: int, image_count: int) -> discord.ui.View:
    """🔁 📌 🗑️ on the first row, one variation button per image on the second."""
    view = discord.ui.View(timeout=None)
    for action in _ACTIONS:
        view.add_item(GenerationButton(action, generation_id))
    for image in range(1, image_count + 1):
        view.add_item(VariationButton(generation_id, image))
    return view


class ForgetButton(discord.ui.DynamicItem[discord.ui.Button], template=r"pawtrait:forget:(?P<pet>\d+):(?P<user>\d+)"):
    """The confirm button of `/forget`: only the member who asked can press it."""

    def __init__(self, pet_id: int, user_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Yes, forget everything", emoji="🗑️", style=discord.ButtonStyle.danger,
                custom_id=f"pawtrait:forget:{pet_id}:{user_id}",
            )
        )
        self.pet_id = pet_id
        self.user_id = user_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]):
        return cls(int(match["pet"]), int(match["user"]))

    async def callback(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        bot: PawtraitBot = interaction.client  # type: ignore[assignment]
        if interaction.user.id != self.user_id:
            await interaction.response.send_message("Only the member who asked to forget this pet can confirm.", ephemeral=True)
            return
        db = bot.db
        pet = await get_pet(db, self.pet_id)
        if pet is None or pet.guild_id != str(interaction.guild_id):
            await interaction.response.edit_message(content="That pet is already gone.", view=None)
            return
        if pet.owner_id != str(interaction.user.id) and not is_manager(interaction):
            await interaction.response.send_message("Only the owner or someone with Manage Server can do that.", ephemeral=True)
            return
        await interaction.response.defer()
        try:
            footprint = await forget_pet(db, bot.store, pet)
        except PetBusy as error:
            await interaction.edit_original_response(content=f"❌ {error}", view=None)
            return
        await interaction.edit_original_response(
            content=f"🗑️ Forgot **{pet.name}**: {_footprint(footprint)} deleted.", view=None
        )


def _footprint(footprint: PetFootprint) -> str:
    return (
        f"{footprint.photos} photo{'s' * (footprint.photos != 1)}, {footprint.runs} training{'s' * (footprint.runs != 1)} "
        f"and {footprint.generations} generation{'s' * (footprint.generations != 1)}"
    )
