"""Queueing a generation from Discord (`/imagine`, the 🔁 and V1…V4 buttons share this).

The member gets an answer at once (queue position and expected wait); that answer is the
message the job relay later edits with the preview and the final images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord

from bot.checks import UserError, guild_key
from bot.formatting import queue_line
from engine.generation.request import GenerationError, GenerationRequest
from storage.db import Queries
from storage.discord_posts import add_discord_job, set_status_message
from storage.generations import default_checkpoint
from storage.guild_settings import others_may_imagine
from storage.jobs import QueueLimitReached, estimate_wait_s, queue_position, submit_job
from storage.pets import Pet

if TYPE_CHECKING:
    from bot.app import PawtraitBot


async def require_may_imagine(db: Queries, interaction: discord.Interaction, pet: Pet) -> None:
    if pet.owner_id != str(interaction.user.id) and not await others_may_imagine(db, pet.id):
        raise UserError(f"<@{pet.owner_id}> keeps **{pet.name}** to themselves: only they can imagine with it.")


async def queue_generation(
    bot: "PawtraitBot", interaction: discord.Interaction, request: GenerationRequest, pet: Pet | None
) -> None:
    """Check the request, submit the job and answer with its place in the queue."""
    if pet is not None:
        request.pet_id = pet.id
    try:
        request.validate()
    except GenerationError as error:
        raise UserError(str(error)) from None
    guild_id = guild_key(interaction)
    db = bot.db
    if pet is not None and await default_checkpoint(db, pet.id, pet.active_checkpoint_id) is None:
        raise UserError(f"**{pet.name}** has no finished training yet: `/train pet:{pet.name}` first, then imagine again.")
    try:
        job = await submit_job(
            db, bot.settings, "generate", guild_id, str(interaction.user.id),
            {"request": request.to_dict(), "discord": {"channel_id": str(interaction.channel_id)}},
        )
    except QueueLimitReached as error:
        raise UserError(f"You {str(error).removeprefix('you ')}.") from None
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
    db = bot.db
    await set_status_message(db, job.id, str(message.id))
