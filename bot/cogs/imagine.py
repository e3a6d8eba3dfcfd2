"""Pictures: `/imagine`, the job's message (preview while painting, then the images), and the
buttons under the images (🔁 reroll, 📌 share, 🗑️ delete, 🚩 report, V1…V4 variations).

Prompts are screened where the engine queues them (engine.usecases.queueing), with whether this
channel is age-restricted. 🗑️ (the requester or a moderator) removes the picture and its
gallery copy; 🚩 records a report and posts it, with the picture's audit line, to the
server's moderators' channel.

The worker screened every picture (and published no flagged preview); which pictures the
message shows follows the server's `safety` setting and the channel (bot.safety). A flagged
picture never goes to the gallery and gets no variation button.

The member gets an answer at once (queue position and expected wait); that answer is the
message the painting's events (`on_pawtrait_generate_<event>`, from bot.job_relay) edit.
Each button's custom_id carries what it acts on (`pawtrait:gen:<action>:<generation id>`,
`pawtrait:vary:<generation id>:<image>`); discord.py's dynamic items parse it back, so old
messages' buttons still work after the bot restarts.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.audit_log import note
from bot.checks import MemberCheck, UserError, guild_key, in_age_restricted_channel, pet_choices, pet_named
from bot.formatting import MESSAGE_LIMIT, audit_text, clip, echo, progress_bar, queue_line
from bot.job_relay import JobUpdate
from bot.safety import age_restricted, showing, strict_notice, withheld_notice
from engine.usecases.generation.request import (
    DEFAULT_STEPS,
    DEFAULT_VARIATION_STRENGTH,
    MAX_COUNT,
    MAX_STEPS,
    SIZE_PRESETS,
    GenerationError,
    GenerationRequest,
)
from engine.usecases.jobs.contract import ContractError
from engine.usecases.jobs.generate import GENERATE, Preview
from engine.usecases.moderation.prompts import ALLOWED, PromptRefused
from engine.usecases.pet_prompts import mentions_pet
from engine.usecases.queueing import check_prompt_for
from engine.usecases.queueing import queue_generation as queue_job
from storage.audit import audit_lines_of_job, has_audit_line
from storage.db import Queries
from storage.discord_posts import (
    job_for_generation,
    set_gallery_message,
    set_generation_message,
    set_status_message,
    shown_in,
)
from storage.generations import Generation, get_generation
from storage.guild_settings import GuildSettings, get_guild_settings, others_may_imagine
from storage.jobs import QueueLimitReached, estimate_wait_s, get_job, queue_position
from storage.pets import Pet, get_pet, list_pets

if TYPE_CHECKING:
    from bot.app import PawtraitBot

PREVIEW_EDIT_INTERVAL_S = 2.0
REPORTED = "reported to the moderators"  # the verdict of a report the moderators' channel got
_ACTIONS = {"reroll": ("🔁", "Reroll"), "share": ("📌", "Share"), "delete": ("🗑️", "Delete"), "report": ("🚩", "Report")}


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
    """Queue the request (the engine checks it and screens its prompt for this channel) and
    answer with its place in the queue."""
    guild_id = guild_key(interaction)
    db = bot.db
    request = replace(request, age_restricted=in_age_restricted_channel(interaction))
    note(interaction, prompt=request.prompt, seed=request.seed, pet=pet.name if pet else None,
         checkpoint_id=request.checkpoint_id or (pet.active_checkpoint_id if pet else None))
    try:
        job = await queue_job(db, bot.settings, request, pet, guild_id, str(interaction.user.id),
                              also=shown_in(guild_id, str(interaction.channel_id), str(interaction.user.id)))
    except PromptRefused as error:
        note(interaction, verdict=error.verdict.audit_text)
        raise UserError(str(error)) from None
    except (GenerationError, QueueLimitReached) as error:
        raise UserError(str(error)) from None
    note(interaction, job_id=job.id, verdict=ALLOWED.audit_text)
    position = await queue_position(db, job.id)
    wait = await estimate_wait_s(db, job.id)
    who = f" with **{pet.name}**" if pet else ""
    seed = f" · seed {request.seed}" if request.seed is not None else ""
    varied = f" · variations of image {request.source_image}" if request.is_variation else ""
    await interaction.response.send_message(
        f"🎨 **{echo(request.prompt)}**{who}{seed}{varied} · {request.count} image{'s' * (request.count != 1)} · "
        f"{queue_line(position, wait)} (job #{job.id})",
    )
    message = await interaction.original_response()
    await set_status_message(db, job.id, str(message.id))
    bot.asked.remember(job.id, interaction)  # for an ephemeral word about withheld pictures


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
        elif mentions_pet(prompt):
            chosen = await default_pet(db, interaction)
        if chosen is not None:
            await require_may_imagine(db, interaction, chosen)
        request = asked_for(
            interaction, None, prompt=prompt, negative_prompt=negative, seed=seed, steps=steps, size=size, count=count
        )
        await queue_generation(self.bot, interaction, request, chosen)

    @imagine.autocomplete("pet")
    async def _pet_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await pet_choices(self.bot.db, interaction, current)

    # ---- the painting's message --------------------------------------------------------

    @commands.Cog.listener()
    async def on_pawtrait_generate_started(self, update: JobUpdate) -> None:
        await self.bot.job_messages.status(update.target, f"🎨 Painting **{_prompt(update)}**…", force=True)

    @commands.Cog.listener()
    async def on_pawtrait_generate_preview(self, update: JobUpdate[Preview]) -> None:
        preview, messages = update.happened, self.bot.job_messages
        step, total = preview.step, preview.total or 1
        files = await self.bot.local_copies([preview.path]) if preview.path else []
        await messages.status(
            update.target,
            f"🎨 Painting **{_prompt(update)}** `{progress_bar(step, total)}` step {step}/{total}",
            files=files,
            force=bool(files) and messages.first_progress(update.job.id),
            interval_s=PREVIEW_EDIT_INTERVAL_S,
        )

    @commands.Cog.listener()
    async def on_pawtrait_generate_finished(self, update: JobUpdate) -> None:
        db, target, job = self.bot.db, update.target, update.job
        result = GENERATE.result_of(job)
        generation = await get_generation(db, result.generation_id if result else job.generation_id or 0)
        if generation is None:
            await self.bot.job_messages.status(target, "❌ The images were made but cannot be found any more.", force=True)
            return
        pet = await get_pet(db, generation.pet_id) if generation.pet_id else None
        seeds = (result.seeds if result else ()) or [generation.seed + i for i in range(len(generation.files))]
        lines = [
            f"🎨 **{echo(generation.prompt)}** for <@{target.requested_by}>" + (f" · {pet.name}" if pet else ""),
            f"seed{'s' if len(seeds) > 1 else ''} {', '.join(str(s) for s in seeds)} · {generation.steps} steps · "
            f"guidance {generation.guidance:g} · {generation.width}×{generation.height}"
            + (f" · negative: {echo(generation.negative_prompt)}" if generation.negative_prompt else ""),
        ]
        if generation.source_generation_id is not None:
            lines.append(f"🔀 variation of image {generation.source_image} of generation #{generation.source_generation_id}"
                         f" · strength {generation.variation_strength:g}")
        lines += [f"⚠️ {warning}" for warning in (result.warnings if result else ())]
        policy = (await get_guild_settings(db, target.guild_id)).safety
        channel = await self.bot.job_messages.channel(target.post_channel_id)
        paths = [next(iter(await self.bot.local_copies([key])), None) for key in generation.files]
        flagged = [generation.is_flagged(index) for index in range(len(generation.files))]
        shown = showing(paths, flagged, policy, age_restricted(channel))
        if shown.withheld:
            lines.append(withheld_notice(shown.withheld))
        message = await self.bot.job_messages.status(
            target, "\n".join(lines), files=shown.files, force=True,
            view=generation_view(generation.id, [n for n in shown.shown if not flagged[n - 1]]), ping=target.requested_by,
        )
        if message is not None:
            await set_generation_message(db, generation.id, str(message.id))
        asked = self.bot.asked.take(job.id)
        if shown.withheld and policy == "strict" and asked is not None:
            try:
                await asked.followup.send(strict_notice(shown.withheld, f"**{echo(generation.prompt)}**"), ephemeral=True)
            except discord.HTTPException:
                pass  # the member's command expired meanwhile: the public notice stands

    @commands.Cog.listener()
    async def on_pawtrait_generate_failed(self, update: JobUpdate) -> None:
        self.bot.asked.take(update.job.id)
        why = update.why_failed
        await self.bot.job_messages.status(
            update.target, f"❌ Could not paint **{_prompt(update)}**: {why} (job #{update.job.id})", force=True
        )

    @commands.Cog.listener()
    async def on_pawtrait_generate_cancelled(self, update: JobUpdate) -> None:
        self.bot.asked.take(update.job.id)
        await self.bot.job_messages.status(update.target, f"⏹️ Cancelled: **{_prompt(update)}**", force=True)


def _prompt(update: JobUpdate) -> str:
    try:
        payload = GENERATE.payload_of(update.job)
    except ContractError:
        return "your picture"
    return echo(payload.request.prompt)


def asked_for(interaction: discord.Interaction, base: GenerationRequest | None, **values: Any) -> GenerationRequest:
    """A request as the member asks for it (new, or `base` changed): the one place a request
    from Discord is checked; what the member got wrong comes back in plain words."""
    try:
        return replace(base, **values) if base is not None else GenerationRequest(**values)
    except GenerationError as error:
        note(interaction, prompt=values.get("prompt", base.prompt if base is not None else None))
        raise UserError(str(error)) from None


# ---- the buttons under the images ------------------------------------------------------


def generation_view(generation_id: int, images: list[int]) -> discord.ui.View:
    """🔁 📌 🗑️ on the first row, one variation button per shown image (numbers from 1) on the second."""
    view = discord.ui.View(timeout=None)
    for action in _ACTIONS:
        view.add_item(GenerationButton(action, generation_id))
    for image in images:
        view.add_item(VariationButton(generation_id, image))
    return view


class GenerationButton(MemberCheck, discord.ui.DynamicItem[discord.ui.Button],
                       template=r"pawtrait:gen:(?P<action>reroll|share|delete|report):(?P<id>\d+)"):
    def __init__(self, action: str, generation_id: int) -> None:
        emoji, label = _ACTIONS[action]
        style = discord.ButtonStyle.danger if action == "delete" else discord.ButtonStyle.secondary
        super().__init__(
            discord.ui.Button(label=label, emoji=emoji, style=style, custom_id=f"pawtrait:gen:{action}:{generation_id}")
        )
        self.action = action
        self.generation_id = generation_id
        self.audit_command = f"imagine {action}"

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]):
        return cls(match["action"], int(match["id"]))

    async def act(self, interaction: discord.Interaction) -> None:
        bot: PawtraitBot = interaction.client  # type: ignore[assignment]
        generation = await _generation_here(bot, interaction, self.generation_id)
        note(interaction, prompt=generation.prompt, seed=generation.seed, checkpoint_id=generation.checkpoint_id,
             generation_id=generation.id)
        if self.action == "reroll":
            request, pet = await _request_again(bot, interaction, generation, "reroll them")
            await queue_generation(bot, interaction, request, pet)
        elif self.action == "share":
            await _share(bot, interaction, generation)
        elif self.action == "report":
            await _report(bot, interaction, generation)
        else:
            await _delete(bot, interaction, generation)


class VariationButton(MemberCheck, discord.ui.DynamicItem[discord.ui.Button],
                      template=r"pawtrait:vary:(?P<id>\d+):(?P<image>\d+)"):
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
        self.audit_command = "imagine variation"

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]):
        return cls(int(match["id"]), int(match["image"]))

    async def act(self, interaction: discord.Interaction) -> None:
        bot: PawtraitBot = interaction.client  # type: ignore[assignment]
        generation = await _generation_here(bot, interaction, self.generation_id)
        request, pet = await _request_again(bot, interaction, generation, "make variations of them")
        request = asked_for(interaction, request, source_generation_id=generation.id, source_image=self.image,
                            variation_strength=DEFAULT_VARIATION_STRENGTH)
        if self.image <= len(generation.files) and generation.is_flagged(self.image - 1):
            raise UserError(f"The safety check flagged image {self.image}, so it gets no variations: "
                            "make variations of another image, or 🔁 reroll.")
        note(interaction, generation_id=generation.id)
        await queue_generation(bot, interaction, request, pet)


async def _share(bot: PawtraitBot, interaction: discord.Interaction, generation: Generation) -> None:
    """Post the pictures to the gallery once, however often 📌 is pressed (bot.presses)."""
    settings = await get_guild_settings(bot.db, str(interaction.guild_id))
    if settings.gallery_channel_id is None:
        raise UserError(
            "This server has no gallery channel yet; someone with Manage Server can set one with `/settings change gallery:`."
        )
    claim = ("share", generation.id)
    if not bot.presses.take(claim):
        raise UserError("These images are being shared to the gallery right now; one 📌 is enough.")
    try:  # read again: a press just before this one may have shared them meanwhile
        await _share_claimed(bot, interaction, await _generation_here(bot, interaction, generation.id), settings)
    finally:
        bot.presses.give_back(claim)


async def _share_claimed(
    bot: PawtraitBot, interaction: discord.Interaction, generation: Generation, settings: GuildSettings
) -> None:
    if generation.gallery_message_id is not None:
        raise UserError(f"These images are in the gallery already: <#{generation.gallery_channel_id}>.")
    passed = [key for index, key in enumerate(generation.files) if not generation.is_flagged(index)]
    if not passed:
        raise UserError("The safety check flagged these images, so they can't be shared to the gallery.")
    gallery = await bot.job_messages.channel(settings.gallery_channel_id)
    try:  # the prompt was screened for the channel it was asked in, with the server's words then
        await check_prompt_for(bot.db, generation.prompt, generation.guild_id, age_restricted=age_restricted(gallery))
    except PromptRefused as error:
        raise UserError(f"These images can't go to <#{settings.gallery_channel_id}>: their prompt "
                        + _NOT_FOR_GALLERY.get(error.verdict.reason or "", "is refused there now") + ".") from None
    await interaction.response.defer(ephemeral=True, thinking=True)
    source = f" · [original]({interaction.message.jump_url})" if interaction.message else ""
    copy = await bot.job_messages.send(  # pings nobody; the pictures made to fit the server's upload limit
        settings.gallery_channel_id,
        f"📌 **{echo(generation.prompt)}** by <@{generation.requested_by}>, shared by <@{interaction.user.id}> "
        f"· seed {generation.seed}{source}",
        files=list(await bot.local_copies(passed)),
    )
    await set_gallery_message(bot.db, generation.id, str(copy.channel.id), str(copy.id))
    await interaction.edit_original_response(content=f"Shared to <#{settings.gallery_channel_id}>.")


_NOT_FOR_GALLERY = {
    "explicit": "is allowed only in age-restricted channels, and the gallery is not one",
    "server words": "uses words this server's moderators have blocked",
}


def _is_moderator(interaction: discord.Interaction) -> bool:
    return interaction.permissions.manage_messages or interaction.permissions.manage_guild


async def _delete(bot: PawtraitBot, interaction: discord.Interaction, generation: Generation) -> None:
    """Remove the images everywhere Pawtrait posted them: this message and the gallery copy."""
    if generation.requested_by != str(interaction.user.id) and not _is_moderator(interaction):
        raise UserError("Only the member who asked for these images (or a moderator) can delete them.")
    await interaction.response.defer(ephemeral=True, thinking=True)
    if interaction.message is not None:
        await _remove(interaction.message)
    if generation.gallery_channel_id is None or generation.gallery_message_id is None:
        await interaction.edit_original_response(content="🗑️ Deleted.")
        return
    channel = bot.get_partial_messageable(int(generation.gallery_channel_id), guild_id=interaction.guild_id)
    await _remove(channel.get_partial_message(int(generation.gallery_message_id)))
    await set_gallery_message(bot.db, generation.id, None, None)
    await interaction.edit_original_response(content="🗑️ Deleted, the gallery copy too.")


async def _remove(message: discord.Message | discord.PartialMessage) -> None:
    try:
        await message.delete()
    except discord.NotFound:
        pass  # someone deleted it by hand already


async def _report(bot: PawtraitBot, interaction: discord.Interaction, generation: Generation) -> None:
    """Record the report (its audit line) and show the moderators the picture and how it was made."""
    settings = await get_guild_settings(bot.db, str(interaction.guild_id))
    if settings.mod_channel_id is None:
        note(interaction, verdict="reported (no moderators' channel)")
        await interaction.response.send_message(
            "🚩 Thank you: your report was recorded. This server has no moderators' channel, so no moderator was "
            "told yet; someone with Manage Server can set one with `/settings mod-channel`.", ephemeral=True,
        )
        return
    claim = ("report", generation.id, interaction.user.id)  # held for good once the moderators were told
    if not bot.presses.take(claim):
        await _already_reported(interaction)
        return
    told = False
    try:
        if await has_audit_line(bot.db, generation.guild_id, str(interaction.user.id), "imagine report", REPORTED,
                                generation.id):
            told = True  # before this bot process started
            await _already_reported(interaction)
            return
        told = await _tell_moderators(bot, interaction, generation, settings.mod_channel_id)
    finally:
        if not told:
            bot.presses.give_back(claim)


async def _already_reported(interaction: discord.Interaction) -> None:
    """A member's second 🚩 on the same pictures: the moderators were told once, and that is enough."""
    note(interaction, verdict="already reported")
    await interaction.response.send_message(
        "🚩 You already reported these images; one report is enough.", ephemeral=True
    )


async def _tell_moderators(
    bot: PawtraitBot, interaction: discord.Interaction, generation: Generation, mod_channel_id: str
) -> bool:
    """Post the report with the pictures' audit lines to the moderators' channel; whether it was posted."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    job_id = await job_for_generation(bot.db, generation.id)
    lines = await audit_lines_of_job(bot.db, generation.guild_id, job_id) if job_id is not None else []
    link = interaction.message.jump_url if interaction.message else f"generation #{generation.id}"
    text = (
        f"🚩 <@{interaction.user.id}> reported [a picture]({link}) asked for by <@{generation.requested_by}> "
        f"(generation #{generation.id}, seed {generation.seed}).\n"
        + ("\n".join(f"🧾 {audit_text(line)}" for line in lines) or "🧾 Its audit line is gone (older than the log keeps).")
    )
    channel = bot.get_partial_messageable(int(mod_channel_id), guild_id=interaction.guild_id)
    try:
        await channel.send(clip(text, MESSAGE_LIMIT))
    except discord.HTTPException:
        note(interaction, verdict="reported (could not post to the moderators' channel)")
        await interaction.edit_original_response(
            content="🚩 Your report was recorded, but I could not post in the moderators' channel; please tell a moderator."
        )
        return False
    note(interaction, verdict=REPORTED)
    await interaction.edit_original_response(content="🚩 Thank you: the moderators were told.")
    return True


async def _generation_here(bot: PawtraitBot, interaction: discord.Interaction, generation_id: int) -> Generation:
    """The generation a button acts on, if it still exists in this server."""
    generation = await get_generation(bot.db, generation_id)
    if generation is None or generation.guild_id != str(interaction.guild_id):
        raise UserError("These images were deleted (their pet may have been forgotten).")
    return generation


async def _request_again(
    bot: PawtraitBot, interaction: discord.Interaction, generation: Generation, what: str
) -> tuple[GenerationRequest, Pet | None]:
    """The request that made `generation` (new random seed, the same checkpoint) and its pet, if the
    presser may use that pet."""
    db = bot.db
    job_id = await job_for_generation(db, generation.id)
    job = await get_job(db, job_id) if job_id else None
    pet = await get_pet(db, generation.pet_id) if generation.pet_id else None
    if pet is not None:
        await require_may_imagine(db, interaction, pet)
    try:
        made = GENERATE.payload_of(job) if job is not None else None
    except ContractError:
        made = None
    if made is None:
        raise UserError(f"I no longer know how these images were made, so I can't {what}.")
    # A new random seed; queue_generation sets age_restricted again, for the channel pressed in.
    request = replace(made.request, seed=None)
    if pet is not None:
        # The checkpoint these images were painted with, whatever the pet uses now; the row
        # loses it (NULL) when the checkpoint is deleted.
        if generation.checkpoint_id is None:
            raise UserError(
                f"The checkpoint of **{pet.name}** these images were painted with was deleted, so I can't {what}: "
                "paint anew with `/imagine`."
            )
        request = replace(request, checkpoint_id=generation.checkpoint_id)
    return request, pet


async def setup(bot: PawtraitBot) -> None:
    await bot.add_cog(Imagine(bot))
