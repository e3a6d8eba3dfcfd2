"""`/train`: queue a training; its thread becomes the dashboard (status, validation images).

The run row is written here (engine.training.create, free of torch) with the
installation's training defaults; the GPU worker does the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import UserError, guild_key, pet_choices, pet_named, require_may_train, require_owner
from bot.formatting import queue_line
from engine.training.create import TrainingInputError, create_run
from engine.training.params import TrainingParams
from storage.discord_posts import add_discord_job
from storage.guild_settings import get_guild_settings
from storage.jobs import QueueLimitReached, estimate_wait_s, queue_position, submit_job
from storage.runs import finish_run, list_runs

if TYPE_CHECKING:
    from bot.app import PawtraitBot

DEFAULT_STEPS = 500


def checkpoint_interval(steps: int) -> int:
    """About five checkpoints (each with validation images) per run, as the seed's 100 of 500,
    never more often than every 2 steps."""
    return min(steps, max(2, steps // 5))


def training_params(bot: "PawtraitBot", steps: int, prior_preservation: bool) -> TrainingParams:
    every = checkpoint_interval(steps)
    params = TrainingParams(
        steps=steps,
        resolution=bot.settings.resolution,
        prior_preservation=prior_preservation,
        checkpoint_every=every,
        validate_every=every,
        mode=bot.settings.train_mode,
        compile=bot.settings.compile_training,
        cuda_graphs=bot.settings.cuda_graphs,
    )
    try:
        params.validate()
    except ValueError as error:
        raise UserError(f"{str(error)[:1].upper()}{str(error)[1:]}.") from None
    return params


class Train(commands.Cog):
    def __init__(self, bot: "PawtraitBot") -> None:
        self.bot = bot

    @app_commands.command(name="train", description="Teach Pawtrait your pet from its photos (takes a few minutes)")
    @app_commands.guild_only()
    @app_commands.describe(
        pet="Which pet",
        steps=f"Training steps (default {DEFAULT_STEPS}; more learns more, but can overfit)",
        prior_preservation="Also learn what a generic animal of its kind looks like (slower, keeps variety)",
    )
    async def train(
        self,
        interaction: discord.Interaction,
        pet: str,
        steps: app_commands.Range[int, 1, 5000] = DEFAULT_STEPS,
        prior_preservation: bool = False,
    ) -> None:
        guild_id = guild_key(interaction)
        user_id = str(interaction.user.id)
        db = self.bot.db
        found = await pet_named(db, interaction, pet)
        require_owner(interaction, found, "train")
        await require_may_train(db, interaction)
        limit = (await get_guild_settings(db, guild_id)).max_steps
        if steps > limit:
            raise UserError(f"This server allows at most {limit} steps per training (see `/settings`).")
        if any(run.status in ("queued", "running") for run in await list_runs(db, found.id)):
            raise UserError(f"**{found.name}** is already training or waiting to train; `/queue` shows where.")
        params = training_params(self.bot, steps, prior_preservation)
        try:
            run_id = await create_run(db, self.bot.store, found, params)
        except TrainingInputError as error:
            raise UserError(f"{str(error)[:1].upper()}{str(error)[1:]} (with `/teach`).") from None
        try:
            job = await submit_job(db, self.bot.settings, "train", guild_id, user_id,
                                   {"run_id": run_id, "pet_id": found.id}, run_id=run_id)
        except QueueLimitReached as error:
            await finish_run(db, run_id, "cancelled", 0, "not queued: " + str(error))
            raise UserError(f"You {str(error).removeprefix('you ')}.") from None
        await add_discord_job(db, job.id, guild_id, str(interaction.channel_id), user_id)
        position = await queue_position(db, job.id)
        wait = await estimate_wait_s(db, job.id)
        await interaction.response.send_message(
            f"🏋️ **{found.name}** will train for {steps} steps"
            + (" with prior preservation" if prior_preservation else "")
            + f": {queue_line(position, wait)} (job #{job.id}). Follow it in the thread; "
            f"react to the images you like best there.",
            allowed_mentions=discord.AllowedMentions.none(),
        )
        reply = await interaction.original_response()
        status_text = f"⏳ Waiting for the GPU: {queue_line(position, wait)}."
        try:
            thread = await reply.create_thread(name=f"Training {found.name} (#{run_id})"[:100], auto_archive_duration=1440)
            status = await thread.send(status_text)
            thread_id: str | None = str(thread.id)
        except discord.HTTPException:
            status = await interaction.followup.send(status_text, wait=True)
            thread_id = None
        db = self.bot.db
        await add_discord_job(db, job.id, guild_id, str(interaction.channel_id), user_id,
                              thread_id=thread_id, status_message_id=str(status.id))

    @train.autocomplete("pet")
    async def _pet_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        db = self.bot.db
        return await pet_choices(db, interaction, current)


async def setup(bot: "PawtraitBot") -> None:
    await bot.add_cog(Train(bot))
