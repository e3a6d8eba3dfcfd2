"""`/pets` (the server's pets, with thumbnails of their photos), `/forget` (delete one, after a confirm button) and `/sharing`.

The confirm button's custom_id carries the pet and the member (`pawtrait:forget:<pet>:<member>`),
so it still works after a restart (a discord.py dynamic item).
"""

from __future__ import annotations

import asyncio
import io
import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.audit_log import note
from bot.checks import MemberCheck, UserError, guild_key, is_manager, pet_choices, pet_named, require_owner
from bot.thumbnails import thumbnail_png
from storage.guild_settings import others_may_imagine, set_others_may_imagine
from storage.pet_deletion import PetBusy, PetFootprint, forget_pet, pet_footprint
from storage.pet_status import pet_summaries
from storage.pets import get_pet
from storage.photos import list_photos

if TYPE_CHECKING:
    from bot.app import PawtraitBot

MAX_LISTED = 10  # one embed each; Discord allows ten per message


class Pets(commands.Cog):
    def __init__(self, bot: PawtraitBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ForgetButton)

    @app_commands.command(name="pets", description="The pets of this server, with their status")
    @app_commands.guild_only()
    async def pets(self, interaction: discord.Interaction) -> None:
        db = self.bot.db
        summaries = await pet_summaries(db, guild_key(interaction))
        if not summaries:
            await interaction.response.send_message("No pets here yet: `/teach name class photo1…` adds the first.", ephemeral=True)
            return
        # Fetching photos (from S3 on a distributed install) and drawing thumbnails can pass
        # Discord's 3 s deadline for a first answer.
        await interaction.response.defer(thinking=True)
        embeds, files = [], []
        room = interaction.filesize_limit  # thumbnails that would pass the upload limit are left out
        for summary in summaries[:MAX_LISTED]:
            embed = discord.Embed(
                title=summary.name,
                description=f"{summary.class_noun} of <@{summary.owner_id}> · {summary.photos} photos · {summary.status}",
            )
            if not await others_may_imagine(db, summary.id):
                embed.set_footer(text="only its owner imagines with it")
            photos = await list_photos(db, summary.id)
            for path in await self.bot.local_copies([photo.prepared_path for photo in photos[:1]]):
                data = await asyncio.to_thread(thumbnail_png, path)
                if len(data) > room:
                    continue
                room -= len(data)
                name = f"pet-{summary.id}.png"
                files.append(discord.File(io.BytesIO(data), name))
                embed.set_thumbnail(url=f"attachment://{name}")
            embeds.append(embed)
        more = f"…and {len(summaries) - MAX_LISTED} more." if len(summaries) > MAX_LISTED else ""
        await interaction.edit_original_response(content=more, embeds=embeds, attachments=files)

    @app_commands.command(name="forget", description="Delete a pet with its photos, trainings and pictures")
    @app_commands.guild_only()
    @app_commands.describe(pet="Which pet to forget (asks you to confirm)")
    async def forget(self, interaction: discord.Interaction, pet: str) -> None:
        db = self.bot.db
        found = await pet_named(db, interaction, pet)
        require_owner(interaction, found, "forget")
        footprint = await pet_footprint(db, found.id)
        view = discord.ui.View(timeout=None)
        view.add_item(ForgetButton(found.id, interaction.user.id))
        await interaction.response.send_message(
            f"Forget **{found.name}** for good? This deletes {footprint.photos} photos, {footprint.runs} trainings "
            f"with their LoRAs, and {footprint.generations} generations, from disk and database.",
            view=view,
            ephemeral=True,
        )

    @app_commands.command(name="sharing", description="Let other members imagine with your pet, or not")
    @app_commands.guild_only()
    @app_commands.describe(pet="Which pet", others_may_imagine="Whether other members may use it in /imagine")
    async def sharing(self, interaction: discord.Interaction, pet: str, others_may_imagine: bool) -> None:
        db = self.bot.db
        found = await pet_named(db, interaction, pet)
        require_owner(interaction, found, "change sharing of")
        await set_others_may_imagine(db, found.id, others_may_imagine)
        who = "everyone in this server" if others_may_imagine else "only its owner"
        await interaction.response.send_message(f"**{found.name}** can now be imagined by {who}.", ephemeral=True)

    @forget.autocomplete("pet")
    @sharing.autocomplete("pet")
    async def _pet_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        db = self.bot.db
        return await pet_choices(db, interaction, current)


class ForgetButton(MemberCheck, discord.ui.DynamicItem[discord.ui.Button],
                   template=r"pawtrait:forget:(?P<pet>\d+):(?P<user>\d+)"):
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
        self.audit_command = "forget confirm"

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]):
        return cls(int(match["pet"]), int(match["user"]))

    async def act(self, interaction: discord.Interaction) -> None:
        bot: PawtraitBot = interaction.client  # type: ignore[assignment]
        if interaction.user.id != self.user_id:
            raise UserError("Only the member who asked to forget this pet can confirm.")
        db = bot.db
        pet = await get_pet(db, self.pet_id)
        if pet is None or pet.guild_id != str(interaction.guild_id):
            raise UserError("That pet is already gone.")
        note(interaction, pet=pet.name)
        if pet.owner_id != str(interaction.user.id) and not is_manager(interaction):
            raise UserError("Only the owner or someone with Manage Server can do that.")
        await interaction.response.defer()
        try:
            footprint = await forget_pet(db, bot.store, pet)
        except PetBusy as error:
            raise UserError(f"❌ {error}") from error  # replaces the question, as the answer below does
        await interaction.edit_original_response(
            content=f"🗑️ Forgot **{pet.name}**: {_footprint(footprint)} deleted.", view=None
        )


def _footprint(footprint: PetFootprint) -> str:
    return (
        f"{footprint.photos} photo{'s' * (footprint.photos != 1)}, {footprint.runs} training{'s' * (footprint.runs != 1)} "
        f"and {footprint.generations} generation{'s' * (footprint.generations != 1)}"
    )


async def setup(bot: PawtraitBot) -> None:
    await bot.add_cog(Pets(bot))
