"""`/teach` and the "Teach Pawtrait" message command: photos in, a contact sheet out.

Slash-command attachment options carry one file each, so `/teach` takes up to ten; the
message command takes every photo of a message (up to ten), so 15 photos are two
messages, not fifteen commands. Decoding and cropping run in a thread (engine.usecases.teach).

Photos are big (ten 24 MB files a command), so the bot bounds what intake may hold: a member
starts one batch per PAWTRAIT_TEACH_COOLDOWN_S, and at most INTAKE_BATCHES batches are
downloaded and decoded at once across the bot; later ones wait their turn, deferred.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.audit_log import begin, note, record
from bot.checks import UserError, guild_key, member_allowed
from bot.cooldown import MemberCooldown
from bot.formatting import code, listing
from bot.job_messages import fitted
from engine.usecases.teach import (
    MIN_GOOD_PHOTOS,
    TeachError,
    TeachReport,
    clean_class_noun,
    clean_pet_name,
    teach_photos,
)
from storage.pets import PetNameTaken, find_pet, list_pets

if TYPE_CHECKING:
    from bot.app import PawtraitBot

_MARKS = {"accepted": "✅", "warning": "⚠️", "rejected": "❌", "skipped": "⏭️"}
# Discord's own limit for a bot upload is 25 MB; intake refuses bigger files too.
MAX_FILE_BYTES = 25 * 1024 * 1024
# Batches downloaded and decoded at once. A batch holds up to 240 MB of files until they are
# stored, so eight at once held 1.9 GB of bytes alone; two keep the bot under 1.5 GB and still
# use both cores of a small host (benchmarks/teach_flood.py, docs/BENCHMARKS.md).
INTAKE_BATCHES = 2


def report_text(report: TeachReport, pet_name: str, refused: list[str], people_checked: bool = True) -> str:
    """The answer to a `/teach`: what was added, one line per file (those not even downloaded
    last), warnings and the next step; a long list of files ends with "…and N more".
    `people_checked`: the workers refuse photos of people (PAWTRAIT_SAFETY on)."""
    if report.pet is None:
        head = f"❌ Nothing was added: none of these files could be used for **{pet_name}**."
    else:
        new = "New pet " if report.created else ""
        head = (
            f"🐾 {new}**{report.pet.name}** ({report.pet.class_noun}): {report.accepted} photo"
            f"{'s' * (report.accepted != 1)} added, {report.total_photos} in total."
        )
    files = []
    for result in report.files:
        reason = f": {result.reason}" if result.reason else ""
        files.append(f"{_MARKS.get(result.status, '•')} {code(result.name, 100)}{reason}")
    tail = [f"⚠️ {warning}" for warning in report.warnings]
    if report.pet is not None and people_checked:
        tail.append("🔎 When a training starts, the GPU first checks that the photos show your pet, not a person: "
                    "a photo of a person stops the training, and you are told which.")
    if report.pet is not None and report.total_photos >= MIN_GOOD_PHOTOS:
        tail.append(f"Ready to learn: `/train pet:{report.pet.name}`")
    return listing([head], files + refused, tail)


async def download(attachments: list[discord.Attachment]) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The files' bytes, and a plain reason for each one not even downloaded."""
    files, refused = [], []
    for attachment in attachments:
        if attachment.size > MAX_FILE_BYTES:
            refused.append(f"❌ {code(attachment.filename, 100)}: larger than 25 MB; send a smaller copy")
            continue
        try:
            files.append((attachment.filename, await attachment.read()))
        except discord.HTTPException:
            refused.append(f"❌ {code(attachment.filename, 100)}: could not be downloaded from Discord; send it again")
    return files, refused


class TeachModal(discord.ui.Modal, title="Teach Pawtrait these photos"):
    """Asks the name and class for the message command (message commands take no options)."""

    pet_name = discord.ui.TextInput(label="Pet name", max_length=32)
    class_noun = discord.ui.TextInput(label="What is it? (cat, dog, rabbit…)", max_length=32)

    def __init__(self, cog: Teach, message: discord.Message, name: str = "", noun: str = "") -> None:
        super().__init__()
        self.cog = cog
        self.message = message
        self.pet_name.default = name or None
        self.class_noun.default = noun or None

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """The commands' deny check again: the member may have been denied while the form was open."""
        begin(interaction, "teach form")
        return await member_allowed(interaction)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.cog.teach_from(interaction, str(self.pet_name), str(self.class_noun), list(self.message.attachments))
        await record(self.cog.bot, interaction, "done")

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:  # type: ignore[override]
        await self.cog.bot.on_app_command_error(interaction, error)  # type: ignore[arg-type]


class Teach(commands.Cog):
    def __init__(self, bot: PawtraitBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name="Teach Pawtrait", callback=self.teach_message)
        bot.tree.add_command(self.menu)
        self.cooldown = MemberCooldown(bot.settings.teach_cooldown_s)
        self.intake = asyncio.Semaphore(INTAKE_BATCHES)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    @app_commands.command(name="teach", description="Add photos of your pet (10-15 varied photos work best)")
    @app_commands.guild_only()
    @app_commands.rename(noun="class")
    @app_commands.describe(
        name="Your pet's name (a new name creates the pet)",
        noun="What it is: cat, dog, rabbit…",
        photo1="A photo of your pet",
    )
    async def teach(
        self,
        interaction: discord.Interaction,
        name: str,
        noun: str,
        photo1: discord.Attachment,
        photo2: discord.Attachment | None = None,
        photo3: discord.Attachment | None = None,
        photo4: discord.Attachment | None = None,
        photo5: discord.Attachment | None = None,
        photo6: discord.Attachment | None = None,
        photo7: discord.Attachment | None = None,
        photo8: discord.Attachment | None = None,
        photo9: discord.Attachment | None = None,
        photo10: discord.Attachment | None = None,
    ) -> None:
        photos = [p for p in (photo1, photo2, photo3, photo4, photo5, photo6, photo7, photo8, photo9, photo10) if p]
        await self.teach_from(interaction, name, noun, photos)

    async def teach_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Message command: ask for the pet (prefilled with the member's latest) in a form."""
        if not message.attachments:
            raise UserError("That message has no files. Use this on a message that carries your pet's photos.")
        self.refuse_while_cooling_down(interaction)
        db = self.bot.db
        mine = await list_pets(db, guild_key(interaction), str(interaction.user.id))
        latest = mine[0] if mine else None
        await interaction.response.send_modal(
            TeachModal(self, message, latest.name if latest else "", latest.class_noun if latest else "")
        )

    def refuse_while_cooling_down(self, interaction: discord.Interaction) -> None:
        wait = self.cooldown.wait_s(interaction.user.id)
        if wait:
            raise UserError(
                f"You just sent photos to teach; send the next ones in {wait} second{'s' * (wait != 1)}."
            )

    async def teach_from(
        self, interaction: discord.Interaction, name: str, noun: str, attachments: list[discord.Attachment]
    ) -> None:
        guild_id = guild_key(interaction)
        if len(attachments) > 10:
            raise UserError("At most 10 photos at a time; send the rest in a second message.")
        # What can be refused cheaply is refused before deferring, so only the member sees it.
        try:
            name, noun = clean_pet_name(name), clean_class_noun(noun)
        except TeachError as error:
            raise UserError(str(error)) from None  # whole sentences, for members
        note(interaction, pet=name)
        db = self.bot.db
        existing = await find_pet(db, guild_id, name)
        if existing is not None and existing.owner_id != str(interaction.user.id):
            raise UserError(f"**{existing.name}** is <@{existing.owner_id}>'s pet; choose another name for yours.")
        self.refuse_while_cooling_down(interaction)
        self.cooldown.start(interaction.user.id)
        await interaction.response.defer(thinking=True)
        async with self.intake:
            files, refused = await download(attachments)
            try:
                db = self.bot.db
                report = await teach_photos(
                    db, self.bot.store, self.bot.settings, guild_id, str(interaction.user.id), name, noun, files,
                    str(interaction.user.id),
                )
            except (TeachError, PetNameTaken) as error:
                raise UserError(str(error)) from None  # whole sentences, for members
        text = report_text(report, name, refused, self.bot.settings.safety)
        sheet = [discord.File(report.contact_sheet, "contact-sheet.png")] if report.contact_sheet else []
        text, sheet = await fitted(text, sheet, interaction.filesize_limit)
        await interaction.edit_original_response(
            content=text, attachments=sheet
        )


async def setup(bot: PawtraitBot) -> None:
    await bot.add_cog(Teach(bot))
