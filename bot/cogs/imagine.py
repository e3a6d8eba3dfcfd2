"""Pictures: `/imagine`, the job's message (preview while painting, then the images), and the
buttons under the images (🔁 reroll, 📌 share, 🗑️ delete, V1…V4 variations).

The member gets an answer at once (queue position and expected wait); that answer is the
message the painting's events (`on_pawtrait_generate_<event>`, from bot.job_relay) edit.
Each button's custom_id carries what it acts on (`pawtrait:gen:<action>:<generation id>`,
`pawtrait:vary:<generation id>:<image>`); discord.py's dynamic items parse it back, so old
messages' buttons still work after the bot restarts.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import UserError, guild_key, pet_choices, pet_named
from bot.formatting import progress_bar, queue_line
from bot.job_relay import JobUpdate
from engine.generation.request import (
    DEFAULT_STEPS,
    DEFAULT_VARIATION_STRENGTH,
    MAX_COUNT,
    MAX_STEPS,
    SIZE_PRESETS,
    GenerationError,
    GenerationRequest,
)
from engine.queueing import queue_generation as queue_job
from storage.db import Queries
from storage.discord_posts import add_discord_job, job_for_generation, set_generation_message, set_status_message
from storage.generations import Generation, get_generation
from storage.guild_settings import get_guild_settings, others_may_imagine
from storage.jobs import Job, QueueLimitReached, estimate_wait_s, get_job, queue_position
from storage.pets import Pet, get_pet, list_pets

if TYPE_CHECKING:
    from bot.app import PawtraitBot

# The same word the generation engine replaces with the pet's trigger token.
TOK = re.compile(r"\bTOK\b")
PREVIEW_EDIT_INTERVAL_S = 2.0
_ACTIONS = {"reroll": ("🔁", "Reroll"), "share": ("📌", "Share"), "delete": ("🗑️", "Delete")}


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


async def require_may_imagine(db: Queries, interaction: discord.Interaction, pet: Pet) -> None:
    if pet.owner_id != str(interaction.user.id) and not await others_may_imagine(db, pet.id):
        raise UserError(f"<@{pet.owner_id}> keeps **{pet.name}** to themselves: only they can imagine with it.")


async def queue_generation(
    bot: PawtraitBot, interaction: discord.Interaction, request: GenerationRequest, pet: Pet | None
) -> None:
    """Queue the request (the engine checks it) and answer with its place in the queue."""
    guild_id = guild_key(interaction)
    db = bot.db
    try:
        job = await queue_job(db, bot.settings, request, pet, guild_id, str(interaction.user.id),
                              {"discord": {"channel_id": str(interaction.channel_id)}})
    except (GenerationError, QueueLimitReached) as error:
        raise UserError(str(error)) from None
    await add_discord_job(db, job.id, guild_id, str(interaction.channel_id), str(interaction.user.id))
    position = await queue_position(db, job.id)
    wait = await estimate_wait_s(db, job.id)
    who = f" with **{pet.name}**" if pet else ""
    seed = f" · seed {request.seed}" if request.seed is not None else ""
    varied = f" · variations of image {request.source_image}" if request.is_variation else ""
    await interaction.response.send_message(
        f"🎨 **{request.prompt}**{who}{seed}{varied} · {request.count} image{'s' * (request.count != 1)} · "
        f"{queue_line(position, wait)} (job #{job.id})",
        allowed_mentions=discord.AllowedMentions.none(),
    )
    message = await interaction.original_response()
    await set_status_message(db, job.id, str(message.id))


class Imagine(commands.Cog):
    def __init__(self, bot: PawtraitBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(GenerationButton, VariationButton)

    @app_commands.command(name="imagine", description="Paint a picture; write TOK for your pet, e.g. 'a photo of TOK cat on the moon'")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="What to paint; TOK is the pet",
        pet="Which pet TOK means (default: your most recent pet)",
        count=f"How many images (1-{MAX_COUNT})",
        seed="Seed for a repeatable picture (default: random)",
        size="Shape of the picture",
        negative="What to keep out of the picture",
        steps=f"Denoising steps (default {DEFAULT_STEPS})",
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
        steps: app_commands.Range[int, 1, MAX_STEPS] = DEFAULT_STEPS,
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
        return await pet_choices(self.bot.db, interaction, current)

    # ---- the painting's message --------------------------------------------------------

    @commands.Cog.listener()
    async def on_pawtrait_generate_started(self, update: JobUpdate) -> None:
        await self.bot.job_messages.status(update.target, f"🎨 Painting **{_prompt(update.job)}**…", force=True)

    @commands.Cog.listener()
    async def on_pawtrait_generate_preview(self, update: JobUpdate) -> None:
        data, messages = update.event.data, self.bot.job_messages
        step, total = int(data.get("step", 0)), int(data.get("total", 0)) or 1
        files = await self.bot.local_copies([data["path"]]) if data.get("path") else []
        await messages.status(
            update.target,
            f"🎨 Painting **{_prompt(update.job)}** `{progress_bar(step, total)}` step {step}/{total}",
            files=files,
            force=bool(files) and messages.first_progress(update.job.id),
            interval_s=PREVIEW_EDIT_INTERVAL_S,
        )

    @commands.Cog.listener()
    async def on_pawtrait_generate_finished(self, update: JobUpdate) -> None:
        db, target, job = self.bot.db, update.target, update.job
        result = job.result or {}
        generation = await get_generation(db, int(result.get("generation_id", job.generation_id or 0)))
        if generation is None:
            await self.bot.job_messages.status(target, "❌ The images were made but cannot be found any more.", force=True)
            return
        pet = await get_pet(db, generation.pet_id) if generation.pet_id else None
        seeds = result.get("seeds") or [generation.seed + i for i in range(len(generation.files))]
        lines = [
            f"🎨 **{generation.prompt}** for <@{target.requested_by}>" + (f" · {pet.name}" if pet else ""),
            f"seed{'s' if len(seeds) > 1 else ''} {', '.join(str(s) for s in seeds)} · {generation.steps} steps · "
            f"guidance {generation.guidance:g} · {generation.width}×{generation.height}"
            + (f" · negative: {generation.negative_prompt}" if generation.negative_prompt else ""),
        ]
        if generation.source_generation_id is not None:
            lines.append(f"🔀 variation of image {generation.source_image} of generation #{generation.source_generation_id}"
                         f" · strength {generation.variation_strength:g}")
        lines += [f"⚠️ {warning}" for warning in result.get("warnings", [])]
        message = await self.bot.job_messages.status(
            target, "\n".join(lines), files=await self.bot.local_copies(generation.files), force=True,
            view=generation_view(generation.id, len(generation.files)), allowed=True,
        )
        if message is not None:
            await set_generation_message(db, generation.id, str(message.id))

    @commands.Cog.listener()
    async def on_pawtrait_generate_failed(self, update: JobUpdate) -> None:
        why = update.event.data.get("error") or update.job.error or "no reason was given"
        await self.bot.job_messages.status(
            update.target, f"❌ Could not paint **{_prompt(update.job)}**: {why}", force=True
        )

    @commands.Cog.listener()
    async def on_pawtrait_generate_cancelled(self, update: JobUpdate) -> None:
        await self.bot.job_messages.status(update.target, f"⏹️ Cancelled: **{_prompt(update.job)}**", force=True)


def _prompt(job: Job) -> str:
    return str((job.payload.get("request") or {}).get("prompt", "your picture"))[:200]


# ---- the buttons under the images ------------------------------------------------------


def generation_view(generation_id: int, image_count: int) -> discord.ui.View:
    """🔁 📌 🗑️ on the first row, one variation button per image on the second."""
    view = discord.ui.View(timeout=None)
    for action in _ACTIONS:
        view.add_item(GenerationButton(action, generation_id))
    for image in range(1, image_count + 1):
        view.add_item(VariationButton(generation_id, image))
    return view


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
            generation = await _generation_here(bot, interaction, self.generation_id)
            if self.action == "reroll":
                request, pet = await _request_again(bot, interaction, generation, "reroll them")
                await queue_generation(bot, interaction, request, pet)
            elif self.action == "share":
                await _share(bot, interaction, generation)
            else:
                await _delete(interaction, generation)
        except UserError as error:
            await bot.on_app_command_error(interaction, error)


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


async def _share(bot: PawtraitBot, interaction: discord.Interaction, generation: Generation) -> None:
    settings = await get_guild_settings(bot.db, str(interaction.guild_id))
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


async def _delete(interaction: discord.Interaction, generation: Generation) -> None:
    if generation.requested_by != str(interaction.user.id) and not interaction.permissions.manage_messages:
        raise UserError("Only the member who asked for these images (or a moderator) can delete them.")
    await interaction.response.defer(ephemeral=True)
    if interaction.message is not None:
        await interaction.message.delete()


async def _generation_here(bot: PawtraitBot, interaction: discord.Interaction, generation_id: int) -> Generation:
    """The generation a button acts on, if it still exists in this server."""
    generation = await get_generation(bot.db, generation_id)
    if generation is None or generation.guild_id != str(interaction.guild_id):
        raise UserError("These images were deleted (their pet may have been forgotten).")
    return generation


async def _request_again(
    bot: PawtraitBot, interaction: discord.Interaction, generation: Generation, what: str
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


async def setup(bot: PawtraitBot) -> None:
    await bot.add_cog(Imagine(bot))
