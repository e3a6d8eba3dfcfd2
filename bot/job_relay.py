"""Turning job events (written by the GPU workers) into Discord messages.

The relay polls `storage.jobs.events_after` about once a second and, for jobs started from
Discord, edits the job's status message in place (trainings: progress bar, step, ETA,
loss; generations: the preview sharpening), posts validation images into the training's
thread, and posts the results. Its read position and each job's message ids live in the
database, so after a restart it continues with the first event it had not handled.
Status edits are rate limited per job (Discord limits edits; the last state always lands).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from bot.formatting import duration, progress_bar
from bot.voting import choose_checkpoint
from storage.db import Queries
from storage.discord_posts import (
    DiscordJob,
    get_discord_job,
    relay_position,
    set_generation_message,
    set_relay_position,
)
from storage.generations import get_generation
from storage.guild_settings import get_guild_settings
from storage.jobs import EventPosition, Job, JobEvent, events_after, get_job, last_event_position
from storage.pets import get_pet
from storage.runs import set_validation_message, validation_is_posted

if TYPE_CHECKING:
    from bot.app import PawtraitBot

log = logging.getLogger(__name__)

STATUS_EDIT_INTERVAL_S = 5.0
PREVIEW_EDIT_INTERVAL_S = 2.0
# A job's status message is posted right after its job is queued; wait this long for it
# before posting updates as new messages.
REPLY_GRACE_S = 10.0


@dataclass
class PendingEdit:
    """The newest status of a job not yet shown because of the rate limit."""

    content: str
    files: list[Path] = field(default_factory=list)


class JobRelay:
    def __init__(self, bot: "PawtraitBot", interval_s: float = 1.0) -> None:
        self.bot = bot
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._last_edit: dict[int, float] = {}
        self._pending: dict[int, PendingEdit] = {}
        self._waiting_since: dict[int, float] = {}
        self._shown_progress: set[int] = set()  # jobs whose first progress/preview was shown

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pawtrait-job-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    async def _run(self) -> None:
        await self.bot.wait_until_ready()
        db = self.bot.db
        position = await relay_position(db)
        if position is None:  # first start ever: nothing old to replay
            position = await last_event_position(db)
            await set_relay_position(db, position)
        while True:
            try:
                position = await self.tick(db, position)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("relaying job events failed; retrying")
            await asyncio.sleep(self.interval_s)

    async def tick(self, db: Queries, position: EventPosition) -> EventPosition:
        """Handle the events after `position`; returns the new position."""
        for event in await events_after(db, position):
            target = await get_discord_job(db, event.job_id)
            if target is not None:
                if self._hold(target, event):
                    break
                try:
                    await self._handle(db, target, event)
                except discord.HTTPException as error:
                    log.warning("could not show event %s of job %s in Discord: %s", event.kind, event.job_id, error)
            position = event.position
            await set_relay_position(db, position)
        await self._flush_due()
        return position

    def _hold(self, target: DiscordJob, event: JobEvent) -> bool:
        """Wait (briefly) for the job's status message to exist: the command that queued the job
        posts it right after submitting, and the worker may be quicker."""
        if target.status_message_id is not None:
            self._waiting_since.pop(target.job_id, None)
            return False
        first = self._waiting_since.setdefault(target.job_id, time.monotonic())
        return time.monotonic() - first < REPLY_GRACE_S

    def _first_progress(self, job_id: int) -> bool:
        """The first progress (or preview) of a job shows at once, even right after "started";
        later ones are rate-limited."""
        if job_id in self._shown_progress:
            return False
        self._shown_progress.add(job_id)
        return True

    # ---- dispatch ------------------------------------------------------------------------

    async def _handle(self, db: Queries, target: DiscordJob, event: JobEvent) -> None:
        job = await get_job(db, event.job_id)
        if job is None:
            return
        if job.kind == "train":
            await self._training_event(db, target, job, event)
        elif job.kind == "generate":
            await self._generation_event(db, target, job, event)

    # ---- trainings -----------------------------------------------------------------------

    async def _training_event(self, db: Queries, target: DiscordJob, job: Job, event: JobEvent) -> None:
        data = event.data
        if event.kind == "started":
            await self._status(target, "🏋️ Training started: getting the photos ready…", force=True)
        elif event.kind == "progress":
            step, total = int(data.get("step", 0)), int(data.get("total", 0)) or 1
            loss = data.get("loss")
            lines = [
                f"🏋️ Training `{progress_bar(step, total)}` {100 * step // total}%",
                f"Step **{step}/{total}** · about {duration(data.get('eta_s'))} left"
                + (f" · loss {loss:.4f}" if isinstance(loss, (int, float)) else ""),
            ]
            await self._status(target, "\n".join(lines), force=self._first_progress(job.id))
        elif event.kind == "validation":
            await self._post_validation(db, target, data)
        elif event.kind == "finished":
            await self._training_finished(db, target, job, data)
        elif event.kind in ("failed", "cancelled"):
            why = data.get("error") or job.error or "no reason was given"
            pet = await get_pet(db, int(job.payload.get("pet_id", 0)))
            owner = pet.owner_id if pet is not None else target.requested_by
            if event.kind == "failed":
                text = f"❌ Training failed: {why}"
                mention = f"<@{owner}> the training failed: {why}\nYour photos are kept; `/train` tries again."
            else:
                text = "⏹️ Training cancelled; its checkpoints are kept."
                mention = f"<@{owner}> the training was cancelled."
            await self._status(target, text, force=True)
            await self._send(target.post_channel_id, mention, allowed=True)

    async def _post_validation(self, db: Queries, target: DiscordJob, data: dict[str, Any]) -> None:
        step = int(data.get("step", 0))
        emoji = (await get_guild_settings(db, target.guild_id)).vote_emoji
        for image in data.get("images", []):
            if await validation_is_posted(db, int(image["id"])):
                continue  # announced again by a resumed worker after we posted it
            found = await self.bot.local_copies([image["path"]])
            if not found:
                continue  # deleted meanwhile (a pruned checkpoint)
            path = found[0]
            label = "before training" if step == 0 else f"step {step}"
            vote = "" if step == 0 else f" · react {emoji} if this looks like your pet"
            message = await self._send(
                target.post_channel_id,
                f"🖼️ **{label}** · `{image.get('prompt', '')}` · seed {image.get('seed', '?')}{vote}",
                files=[path],
            )
            if message is None:
                continue
            await set_validation_message(db, int(image["id"]), str(message.id))
            if step > 0:
                try:
                    await message.add_reaction(emoji)
                except discord.HTTPException:
                    pass

    async def _training_finished(self, db: Queries, target: DiscordJob, job: Job, data: dict[str, Any]) -> None:
        run_id = job.run_id or (job.result or {}).get("run_id") or job.payload.get("run_id")
        pet = await get_pet(db, int(job.payload.get("pet_id", 0)))
        total = int((job.result or {}).get("step") or data.get("step") or 0)
        await self._status(target, f"✅ Training finished `{progress_bar(1, 1)}` 100% · {total} steps", force=True)
        if pet is None or run_id is None:
            return
        emoji = (await get_guild_settings(db, target.guild_id)).vote_emoji
        choice = await choose_checkpoint(db, int(run_id), pet, emoji)
        if choice is None:
            text = f"<@{pet.owner_id}> **{pet.name}** finished training, but no checkpoint was saved."
        else:
            text = (
                f"<@{pet.owner_id}> **{pet.name}** is trained! Using the checkpoint from **step {choice.checkpoint.step}**: "
                f"{choice.reason}.\nTry `/imagine prompt: a photo of TOK {pet.class_noun} as an astronaut`; "
                f"`/pick` chooses another step."
            )
        await self._send(target.post_channel_id, text, allowed=True)

    # ---- generations ---------------------------------------------------------------------

    async def _generation_event(self, db: Queries, target: DiscordJob, job: Job, event: JobEvent) -> None:
        data = event.data
        if event.kind == "started":
            await self._status(target, f"🎨 Painting **{_prompt(job)}**…", force=True)
        elif event.kind == "preview":
            step, total = int(data.get("step", 0)), int(data.get("total", 0)) or 1
            files = await self.bot.local_copies([data["path"]]) if data.get("path") else []
            first = bool(files) and self._first_progress(job.id)
            await self._status(
                target,
                f"🎨 Painting **{_prompt(job)}** `{progress_bar(step, total)}` step {step}/{total}",
                files=files,
                force=first,
                interval_s=PREVIEW_EDIT_INTERVAL_S,
            )
        elif event.kind == "finished":
            await self._generation_finished(db, target, job)
        elif event.kind == "failed":
            why = data.get("error") or job.error or "no reason was given"
            await self._status(target, f"❌ Could not paint **{_prompt(job)}**: {why}", force=True)
        elif event.kind == "cancelled":
            await self._status(target, f"⏹️ Cancelled: **{_prompt(job)}**", force=True)

    async def _generation_finished(self, db: Queries, target: DiscordJob, job: Job) -> None:
        from bot.views import generation_view

        result = job.result or {}
        generation = await get_generation(db, int(result.get("generation_id", job.generation_id or 0)))
        if generation is None:
            await self._status(target, "❌ The images were made but cannot be found any more.", force=True)
            return
        pet = await get_pet(db, generation.pet_id) if generation.pet_id else None
        seeds = result.get("seeds") or [generation.seed + i for i in range(len(generation.files))]
        lines = [
            f"🎨 **{generation.prompt}** for <@{target.requested_by}>"
            + (f" · {pet.name}" if pet else ""),
            f"seed{'s' if len(seeds) > 1 else ''} {', '.join(str(s) for s in seeds)} · {generation.steps} steps · "
            f"guidance {generation.guidance:g} · {generation.width}×{generation.height}"
            + (f" · negative: {generation.negative_prompt}" if generation.negative_prompt else ""),
        ]
        if generation.source_generation_id is not None:
            lines.append(f"🔀 variation of image {generation.source_image} of generation #{generation.source_generation_id}"
                         f" · strength {generation.variation_strength:g}")
        lines += [f"⚠️ {warning}" for warning in result.get("warnings", [])]
        files = await self.bot.local_copies(generation.files)
        message = await self._status(
            target, "\n".join(lines), files=files, force=True,
            view=generation_view(generation.id, len(generation.files)), allowed=True,
        )
        if message is not None:
            await set_generation_message(db, generation.id, str(message.id))

    # ---- sending -------------------------------------------------------------------------

    async def _channel(self, channel_id: str) -> discord.abc.Messageable:
        channel = self.bot.get_channel(int(channel_id))
        if channel is None:
            channel = await self.bot.fetch_channel(int(channel_id))
        return channel  # type: ignore[return-value]

    async def _send(
        self, channel_id: str, content: str, files: list[Path] | None = None, allowed: bool = False
    ) -> discord.Message | None:
        channel = await self._channel(channel_id)
        mentions = discord.AllowedMentions(users=True) if allowed else discord.AllowedMentions.none()
        return await channel.send(
            content, files=[discord.File(path) for path in files or []], allowed_mentions=mentions
        )

    async def _status(
        self,
        target: DiscordJob,
        content: str,
        files: list[Path] | None = None,
        force: bool = False,
        interval_s: float = STATUS_EDIT_INTERVAL_S,
        view: discord.ui.View | None = None,
        allowed: bool = False,
    ) -> discord.Message | None:
        """Edit the job's status message now, or remember the newest state for later."""
        now = time.monotonic()
        if not force and now - self._last_edit.get(target.job_id, 0.0) < interval_s:
            self._pending[target.job_id] = PendingEdit(content, list(files or []))
            return None
        self._pending.pop(target.job_id, None)
        self._last_edit[target.job_id] = now
        return await self._edit(target, content, files or [], view, allowed)

    async def _edit(
        self, target: DiscordJob, content: str, files: list[Path], view: discord.ui.View | None, allowed: bool
    ) -> discord.Message | None:
        mentions = discord.AllowedMentions(users=True) if allowed else discord.AllowedMentions.none()
        if target.status_message_id is None:
            channel = await self._channel(target.post_channel_id)
            kwargs: dict[str, Any] = {"view": view} if view is not None else {}
            return await channel.send(
                content, files=[discord.File(p) for p in files], allowed_mentions=mentions, **kwargs
            )
        channel = await self._channel(target.post_channel_id if target.thread_id else target.channel_id)
        message = channel.get_partial_message(int(target.status_message_id))  # type: ignore[attr-defined]
        kwargs = {"view": view} if view is not None else {}
        try:
            return await message.edit(
                content=content,
                attachments=[discord.File(p) for p in files],
                allowed_mentions=mentions,
                **kwargs,
            )
        except discord.NotFound:
            return None

    async def _flush_due(self) -> None:
        now = time.monotonic()
        for job_id, pending in list(self._pending.items()):
            if now - self._last_edit.get(job_id, 0.0) < STATUS_EDIT_INTERVAL_S:
                continue
            db = self.bot.db
            target = await get_discord_job(db, job_id)
            self._pending.pop(job_id, None)
            if target is None:
                continue
            self._last_edit[job_id] = now
            try:
                await self._edit(target, pending.content, [p for p in pending.files if p.is_file()], None, False)
            except discord.HTTPException as error:
                log.warning("could not update the status of job %s: %s", job_id, error)


def _prompt(job: Job) -> str:
    return str((job.payload.get("request") or {}).get("prompt", "your picture"))[:200]
