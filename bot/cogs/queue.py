"""`/queue` (what the GPU is doing and what waits) and `/cancel`.

A picture's line names its prompt only in the channel it was asked in: screening allowed the
prompt for that channel (explicit words pass in an age-restricted one), and there its pictures
are shown anyway. Elsewhere, maybe a channel where the reader cannot see the pictures, the job
is named by its kind alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import UserError, guild_key, is_manager
from bot.formatting import duration, listing
from engine.usecases.jobs.registry import describe, job_kind
from storage.db import Queries
from storage.discord_posts import get_discord_job
from storage.jobs import Job, estimate_wait_s, get_job, list_jobs, queue_position, request_cancel

if TYPE_CHECKING:
    from bot.app import PawtraitBot

MAX_LISTED = 20  # jobs /queue shows; the rest are counted


async def described_for(db: Queries, job: Job, channel_id: str) -> str:
    """`describe(job)` in the channel the job was asked for from (or its training's thread);
    elsewhere its kind alone (its prompt was screened for its own channel, which the reader
    may not be able to see)."""
    asked = await get_discord_job(db, job.id)
    if asked is not None and channel_id in (asked.channel_id, asked.thread_id):
        return describe(job)
    kind = job_kind(job.kind)
    return f"{kind.emoji} {kind.noun} asked in another channel"


class Queue(commands.Cog):
    def __init__(self, bot: PawtraitBot) -> None:
        self.bot = bot

    @app_commands.command(name="queue", description="What the GPU is doing, what waits, and your place")
    @app_commands.guild_only()
    async def queue(self, interaction: discord.Interaction) -> None:
        lines = []
        db = self.bot.db
        jobs = await list_jobs(db, guild_key(interaction))
        for job in jobs[:MAX_LISTED]:
            position = await queue_position(db, job.id)
            if position == 0:
                where = f"running · {job.progress_text or f'{job.progress:.0%}'}"
            else:
                where = f"#{position} · starts in about {duration(await estimate_wait_s(db, job.id))}"
            mine = " ← yours" if job.user_id == str(interaction.user.id) else ""
            what = await described_for(db, job, str(interaction.channel_id))
            lines.append(f"`job {job.id}` {what} by <@{job.user_id}> · {where}{mine}")
        text = listing([], lines, left_out=len(jobs) - len(lines)) if lines else "Nothing queued or running: the GPU is free."
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel a queued or running job (default: your latest)")
    @app_commands.guild_only()
    @app_commands.describe(job="The job number (see /queue)")
    async def cancel(self, interaction: discord.Interaction, job: int | None = None) -> None:
        guild_id = guild_key(interaction)
        user_id = str(interaction.user.id)
        db = self.bot.db
        if job is None:
            mine = [j for j in await list_jobs(db, guild_id) if j.user_id == user_id]
            if not mine:
                raise UserError("You have nothing queued or running.")
            target = max(mine, key=lambda j: j.id)
        else:
            target = await get_job(db, job)
            if target is None or target.guild_id != guild_id:
                raise UserError(f"There is no job {job} in this server; `/queue` lists them.")
        if target.user_id != user_id and not is_manager(interaction):
            raise UserError("That job is someone else's: only they (or someone with Manage Server) can cancel it.")
        if target.ended:
            raise UserError(f"Job {target.id} already ended ({target.status}).")
        updated = await request_cancel(db, target.id)
        state = "cancelled" if updated.ended else "will stop at the next step; its checkpoints are kept"
        what = await described_for(db, target, str(interaction.channel_id))
        await interaction.response.send_message(f"⏹️ Job {target.id} ({what}) {state}.")


async def setup(bot: PawtraitBot) -> None:
    await bot.add_cog(Queue(bot))
