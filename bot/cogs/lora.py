"""`/lora`: a pet's LoRA as the file AUTOMATIC1111 and ComfyUI load, attached when Discord allows.

The file (fp16 with kohya metadata, engine/usecases/export) is made on the first request for a
checkpoint and kept beside it. The answer is deferred first: making the file takes a few
seconds for a full-size LoRA, past Discord's 3 s deadline for a first reply. When it is over
the upload limit Discord reports for the interaction (it grows with server boosts), the
member is told how the operator can export it instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import UserError, pet_choices, pet_named, require_owner
from engine.usecases.export.choice import ExportError
from engine.usecases.export.download import download_caption, prepare_download, too_big_message

if TYPE_CHECKING:
    from bot.app import PawtraitBot


class Lora(commands.Cog):
    def __init__(self, bot: PawtraitBot) -> None:
        self.bot = bot

    @app_commands.command(name="lora", description="Download your pet's LoRA for AUTOMATIC1111, ComfyUI and other SDXL tools")
    @app_commands.guild_only()
    @app_commands.describe(pet="Which pet", step="A saved checkpoint's step (default: the one the pet uses now)")
    async def lora(self, interaction: discord.Interaction, pet: str, step: app_commands.Range[int, 1] | None = None) -> None:
        found = await pet_named(self.bot.db, interaction, pet)
        require_owner(interaction, found, "download the LoRA of")
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            download = await prepare_download(self.bot.db, self.bot.store, found, step, base_model=self.bot.settings.model)
        except ExportError as error:
            raise UserError(str(error)) from None
        limit = interaction.filesize_limit
        if download.size > limit:
            await interaction.edit_original_response(content=too_big_message(found, download, limit))
            return
        await interaction.edit_original_response(
            content=download_caption(found, download),
            attachments=[discord.File(download.path, filename=download.filename)],
        )

    @lora.autocomplete("pet")
    async def _pet_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await pet_choices(self.bot.db, interaction, current)


async def setup(bot: PawtraitBot) -> None:
    await bot.add_cog(Lora(bot))
