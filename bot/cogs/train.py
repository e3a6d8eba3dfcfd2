"""Training a pet: `/train`, its thread (status with the latest scores, validation images, the
finish message with the scores chart), ⭐ votes on the validation images, and `/pick`.
A validation image the safety check flagged is shown as the server's `safety` setting and the
thread's channel allow (bot.safety); in its place a notice says it was withheld.

`/train` queues the run (engine.usecases.queueing, free of torch) with the installation's training
defaults and opens a thread; the GPU worker does the rest, and its events reach this cog
as `on_pawtrait_train_<event>` (bot.job_relay). Votes come from raw reaction events, which
carry only ids: the validation image is found by its message id in the database, so votes
on images posted before a restart still count.
"""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.audit_log import note
from bot.checks import UserError, guild_key, pet_choices, pet_named, require_may_train, require_owner
from bot.formatting import MESSAGE_LIMIT, clip, code, duration, progress_bar, queue_line, scores_text
from bot.job_relay import JobUpdate
from bot.safety import age_restricted, showing
from engine.usecases.export.choice import ExportError, find_checkpoint
from engine.usecases.jobs.events import Progress
from engine.usecases.jobs.train import TRAIN, Validation, run_id_of
from engine.usecases.queueing import queue_training
from engine.usecases.scoring.chart import score_chart
from engine.usecases.scoring.choice import choose_checkpoint, run_standing, vote_emoji
from engine.usecases.scoring.suggest import RULE
from engine.usecases.training.params import DEFAULT_STEPS, TrainingInputError, TrainingParams
from storage.discord_posts import add_discord_job, shown_in
from storage.guild_settings import get_guild_settings
from storage.jobs import Job, QueueLimitReached, estimate_wait_s, queue_position
from storage.moderation import is_denied
from storage.pets import Pet, get_pet, set_active_checkpoint
from storage.runs import (
    add_vote,
    list_checkpoints,
    list_runs,
    remove_vote,
    set_chosen_checkpoint,
    set_validation_message,
    validation_image_by_message,
    validation_is_posted,
)
from storage.scores import RunScores, run_scores

if TYPE_CHECKING:
    from bot.app import PawtraitBot

MAX_LISTED = 20  # checkpoints /pick lists: the newest, within Discord's 2000 characters


def training_params(bot: PawtraitBot, steps: int, prior_preservation: bool) -> TrainingParams:
    try:
        return TrainingParams.for_steps(steps, bot.settings, prior_preservation=prior_preservation)
    except TrainingInputError as error:
        raise UserError(str(error)) from None


def latest_scores_line(scores: RunScores) -> str:
    """The thread status's score line: the newest scored checkpoint beside the untrained model."""
    scored = [step for step in scores.steps if step.has_scores]
    if not scored:
        return ""
    latest, reference = scored[-1], scores.reference
    line = f"📊 Step {latest.step}: {scores_text(latest.dino, latest.clip_t)}"
    if reference is not None and reference.has_scores:
        line += f" (untrained: {scores_text(reference.dino, reference.clip_t)})"
    return line


class Train(commands.Cog):
    def __init__(self, bot: PawtraitBot) -> None:
        self.bot = bot
        self._score_lines: dict[int, str] = {}  # job id -> the status's score line

    # ---- /train ----------------------------------------------------------------------------

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
            raise UserError(f"This server allows at most {limit} steps per training (`/settings change max_steps:` sets it).")
        params = training_params(self.bot, steps, prior_preservation)
        try:
            job = await queue_training(db, self.bot.store, self.bot.settings, found, params, user_id,
                                       also=shown_in(guild_id, str(interaction.channel_id), user_id))
        except (TrainingInputError, QueueLimitReached) as error:
            raise UserError(str(error)) from None
        note(interaction, job_id=job.id)
        position = await queue_position(db, job.id)
        wait = await estimate_wait_s(db, job.id)
        await interaction.response.send_message(
            f"🏋️ **{found.name}** will train for {steps} steps"
            + (" with prior preservation" if prior_preservation else "")
            + f": {queue_line(position, wait)} (job #{job.id}). Follow it in the thread; "
            f"react to the images you like best there.",
        )
        reply = await interaction.original_response()
        status_text = f"⏳ Waiting for the GPU: {queue_line(position, wait)}."
        try:
            thread = await reply.create_thread(name=f"Training {found.name} (#{job.run_id})"[:100], auto_archive_duration=1440)
            status = await thread.send(status_text)
            thread_id: str | None = str(thread.id)
        except discord.HTTPException:
            status = await interaction.followup.send(status_text, wait=True)
            thread_id = None
        await add_discord_job(db, job.id, guild_id, str(interaction.channel_id), user_id,
                              thread_id=thread_id, status_message_id=str(status.id))

    # ---- /pick -----------------------------------------------------------------------------

    @app_commands.command(name="pick", description="List your pet's checkpoints with scores and votes, or choose one")
    @app_commands.guild_only()
    @app_commands.describe(pet="Which pet", step="The step of a saved checkpoint to use from now on (leave out to list them)")
    async def pick(self, interaction: discord.Interaction, pet: str, step: app_commands.Range[int, 1] | None = None) -> None:
        db = self.bot.db
        found = await pet_named(db, interaction, pet)
        if step is None:
            await interaction.response.send_message(await self._checkpoint_list(found), ephemeral=True)
            return
        require_owner(interaction, found, "choose a checkpoint for")
        try:
            chosen = await find_checkpoint(db, found, step)
        except ExportError as error:
            raise UserError(str(error)) from None
        note(interaction, checkpoint_id=chosen.checkpoint.id)
        await set_active_checkpoint(db, found.id, chosen.checkpoint.id)
        await set_chosen_checkpoint(db, chosen.run.id, chosen.checkpoint.id)
        await interaction.response.send_message(
            f"📍 **{found.name}** now uses the checkpoint from step {step} (training #{chosen.run.id}), "
            f"as <@{interaction.user.id}> chose.",
        )

    async def _checkpoint_list(self, pet: Pet) -> str:
        """The newest training's checkpoints with their scores and votes, the one in use and the suggested one."""
        db = self.bot.db
        for run in await list_runs(db, pet.id):  # newest first
            checkpoints = await list_checkpoints(db, run.id)
            if checkpoints:
                break
        else:
            return f"**{pet.name}** has no checkpoints yet: `/train` makes them."
        emoji = await vote_emoji(db, pet)
        votes, scores, suggestion = await run_standing(db, run.id, pet, emoji)
        by_step = {step.step: step for step in scores.steps}
        lines = [f"**{pet.name}**'s checkpoints (training #{run.id}):"]
        for checkpoint in checkpoints[-MAX_LISTED:]:
            scored = by_step.get(checkpoint.step)
            marks = [scores_text(scored.dino, scored.clip_t)] if scored is not None and scored.has_scores else []
            marks.append(f"{emoji} {votes.get(checkpoint.step, 0)}")
            if checkpoint.id == pet.active_checkpoint_id:
                marks.append("✅ in use")
            if suggestion is not None and suggestion.step == checkpoint.step:
                marks.append("💡 suggested")
            lines.append(f"`step {checkpoint.step}` · " + " · ".join(marks))
        reference = scores.reference
        if reference is not None and reference.has_scores:
            lines.append(f"`untrained` · {scores_text(reference.dino, reference.clip_t)}")
        if suggestion is not None:
            lines.append(f"💡 {suggestion.reason}. ({RULE})")
        else:
            lines.append("No scores for this training, so there is no suggestion.")
        lines.append(f"`/pick pet:{pet.name} step:N` switches (owner or Manage Server).")
        return clip("\n".join(lines), MESSAGE_LIMIT)

    @train.autocomplete("pet")
    @pick.autocomplete("pet")
    async def _pet_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await pet_choices(self.bot.db, interaction, current)

    # ---- votes -----------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self._vote(payload, add=True)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self._vote(payload, add=False)

    async def _vote(self, payload: discord.RawReactionActionEvent, add: bool) -> None:
        if payload.guild_id is None or (self.bot.user and payload.user_id == self.bot.user.id):
            return
        db = self.bot.db
        images = await validation_image_by_message(db, str(payload.message_id))
        if not images or await is_denied(db, str(payload.guild_id), str(payload.user_id)):
            return  # not a vote, or a member a moderator denied (/settings deny)
        emoji = (await get_guild_settings(db, str(payload.guild_id))).vote_emoji
        if str(payload.emoji) != emoji:
            return
        for image in images:
            if image.step == 0:
                continue  # the "before training" images are not a candidate
            change = add_vote if add else remove_vote
            await change(db, str(payload.user_id), emoji, validation_image_id=image.id)

    # ---- the training thread ---------------------------------------------------------------

    @commands.Cog.listener()
    async def on_pawtrait_train_started(self, update: JobUpdate) -> None:
        await self.bot.job_messages.status(update.target, "🏋️ Training started: getting the photos ready…", force=True)

    @commands.Cog.listener()
    async def on_pawtrait_train_progress(self, update: JobUpdate[Progress]) -> None:
        progress = update.happened
        step, total, loss = progress.step, progress.total or 1, progress.loss
        lines = [
            f"🏋️ Training `{progress_bar(step, total)}` {100 * step // total}%",
            f"Step **{step}/{total}** · about {duration(progress.eta_s)} left"
            + (f" · loss {loss:.4f}" if loss is not None else ""),
        ]
        if score_line := await self._score_line(update.job):
            lines.append(score_line)
        messages = self.bot.job_messages
        await messages.status(update.target, "\n".join(lines), force=messages.first_progress(update.job.id))

    async def _score_line(self, job: Job) -> str:
        """The latest scores, read once per job (e.g. after a restart) and renewed by each validation."""
        if job.id not in self._score_lines:
            run_id = run_id_of(job)
            self._score_lines[job.id] = "" if run_id is None else latest_scores_line(await run_scores(self.bot.db, run_id))
        return self._score_lines[job.id]

    @commands.Cog.listener()
    async def on_pawtrait_train_validation(self, update: JobUpdate[Validation]) -> None:
        db, target, step = self.bot.db, update.target, update.happened.step
        if (run_id := run_id_of(update.job)) is not None:
            self._score_lines[update.job.id] = latest_scores_line(await run_scores(db, run_id))
        settings = await get_guild_settings(db, target.guild_id)
        emoji = settings.vote_emoji
        restricted = age_restricted(await self.bot.job_messages.channel(target.post_channel_id))
        for image in update.happened.images:
            if await validation_is_posted(db, image.id):
                continue  # announced again by a resumed worker after we posted it
            found = await self.bot.local_copies([image.path])
            if not found:
                continue  # deleted meanwhile (a pruned checkpoint)
            shown = showing(list(found), [bool(image.flagged)], settings.safety, restricted)
            label = "before training" if step == 0 else f"step {step}"
            vote = "" if step == 0 or shown.withheld else f" · react {emoji} if this looks like your pet"
            withheld = "\n🚫 This picture was withheld." if shown.withheld else ""
            message = await self.bot.job_messages.send(
                target.post_channel_id,
                f"🖼️ **{label}** · {code(image.prompt)} · seed {'?' if image.seed is None else image.seed}{vote}{withheld}",
                files=list(shown.files),
            )
            if message is None:
                continue
            await set_validation_message(db, image.id, str(message.id))
            if step > 0 and not shown.withheld:
                try:
                    await message.add_reaction(emoji)
                except discord.HTTPException:
                    pass

    @commands.Cog.listener()
    async def on_pawtrait_train_finished(self, update: JobUpdate) -> None:
        db, target, job = self.bot.db, update.target, update.job
        run_id, result = run_id_of(job), TRAIN.result_of(job)
        pet = await get_pet(db, TRAIN.payload_of(job).pet_id)
        total = (result.step if result is not None else None) or 0
        status = [f"✅ Training finished `{progress_bar(1, 1)}` 100% · {total} steps"]
        if score_line := self._score_lines.pop(job.id, ""):
            status.append(score_line)
        await self.bot.job_messages.status(target, "\n".join(status), force=True)
        if pet is None or run_id is None:
            return
        choice = await choose_checkpoint(db, run_id, pet)
        if choice is None:
            text = f"<@{pet.owner_id}> **{pet.name}** finished training, but no checkpoint was saved."
            await self.bot.job_messages.send(target.post_channel_id, text, ping=pet.owner_id)
            return
        suggested = choice.suggestion.step if choice.suggestion is not None else None
        # About 0.25 s of drawing: beside the event loop, so interactions are not kept waiting.
        chart = await asyncio.to_thread(score_chart, choice.scores, suggested, choice.voted_step)
        text = (
            f"<@{pet.owner_id}> **{pet.name}** is trained! Using the checkpoint from **step {choice.checkpoint.step}**: "
            f"{choice.reason}.\n"
            + (f"📈 Likeness to the photos and prompt adherence by step; {RULE}.\n" if chart else "")
            + f"Try `/imagine prompt: a photo of TOK {pet.class_noun} as an astronaut`; "
            f"`/pick` lists every checkpoint with its scores and votes, `/lora` downloads the LoRA."
        )
        files = [discord.File(io.BytesIO(chart), filename="scores.png")] if chart else []
        await self.bot.job_messages.send(target.post_channel_id, text, files=files, ping=pet.owner_id)

    @commands.Cog.listener()
    async def on_pawtrait_train_failed(self, update: JobUpdate) -> None:
        self._score_lines.pop(update.job.id, None)
        why = update.why_failed
        owner = await self._owner(update)
        reference = f"(job #{update.job.id})"
        await self.bot.job_messages.status(update.target, f"❌ Training failed: {why} {reference}", force=True)
        await self.bot.job_messages.send(
            update.target.post_channel_id,
            f"<@{owner}> the training failed: {why} {reference}\nYour photos are kept; `/train` tries again.", ping=owner,
        )

    @commands.Cog.listener()
    async def on_pawtrait_train_cancelled(self, update: JobUpdate) -> None:
        self._score_lines.pop(update.job.id, None)
        owner = await self._owner(update)
        await self.bot.job_messages.status(update.target, "⏹️ Training cancelled; its checkpoints are kept.", force=True)
        await self.bot.job_messages.send(
            update.target.post_channel_id, f"<@{owner}> the training was cancelled.", ping=owner
        )

    async def _owner(self, update: JobUpdate) -> str:
        pet = await get_pet(self.bot.db, TRAIN.payload_of(update.job).pet_id)
        return pet.owner_id if pet is not None else update.target.requested_by


async def setup(bot: PawtraitBot) -> None:
    await bot.add_cog(Train(bot))
