"""Showing a job in Discord: its status message, edited in place, and posts beside it.

Cogs call `status` for a job's one message (a training's status in its thread, a
generation's preview and result under the command) and `send` for other posts. Edits are
rate limited per job (Discord limits edits); the newest state is kept and shown once the
interval has passed (`flush_due`, called by the relay), so the last state always lands.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from storage.discord_posts import DiscordJob, get_discord_job

if TYPE_CHECKING:
    from bot.app import PawtraitBot

log = logging.getLogger(__name__)

STATUS_EDIT_INTERVAL_S = 5.0


@dataclass
class PendingEdit:
    """The newest status of a job not yet shown because of the rate limit."""

    content: str
    files: list[Path] = field(default_factory=list)


class JobMessages:
    def __init__(self, bot: PawtraitBot) -> None:
        self.bot = bot
        self._last_edit: dict[int, float] = {}
        self._pending: dict[int, PendingEdit] = {}
        self._shown_progress: set[int] = set()

    def first_progress(self, job_id: int) -> bool:
        """The first progress (or preview) of a job shows at once, even right after "started";
        later ones are rate-limited."""
        if job_id in self._shown_progress:
            return False
        self._shown_progress.add(job_id)
        return True

    async def channel(self, channel_id: str) -> discord.abc.Messageable:
        channel = self.bot.get_channel(int(channel_id))
        if channel is None:
            channel = await self.bot.fetch_channel(int(channel_id))
        return channel  # type: ignore[return-value]

    async def send(
        self, channel_id: str, content: str, files: list[Path | discord.File] | None = None, allowed: bool = False
    ) -> discord.Message | None:
        channel = await self.channel(channel_id)
        mentions = discord.AllowedMentions(users=True) if allowed else discord.AllowedMentions.none()
        attached = [item if isinstance(item, discord.File) else discord.File(item) for item in files or []]
        return await channel.send(content, files=attached, allowed_mentions=mentions)

    async def status(
        self,
        target: DiscordJob,
        content: str,
        files: list[Path | discord.File] | None = None,
        force: bool = False,
        interval_s: float = STATUS_EDIT_INTERVAL_S,
        view: discord.ui.View | None = None,
        allowed: bool = False,
    ) -> discord.Message | None:
        """Edit the job's status message now, or remember the newest state for later."""
        now = time.monotonic()
        if not force and now - self._last_edit.get(target.job_id, 0.0) < interval_s:
            self._pending[target.job_id] = PendingEdit(content, [item for item in files or [] if isinstance(item, Path)])
            return None
        self._pending.pop(target.job_id, None)
        self._last_edit[target.job_id] = now
        return await self._edit(target, content, files or [], view, allowed)

    async def _edit(
        self, target: DiscordJob, content: str, files: list[Path | discord.File], view: discord.ui.View | None,
        allowed: bool,
    ) -> discord.Message | None:
        mentions = discord.AllowedMentions(users=True) if allowed else discord.AllowedMentions.none()
        kwargs: dict[str, Any] = {"view": view} if view is not None else {}
        # A discord.File as given keeps its name (a SPOILER_ one); a path is attached under its own.
        attached = [item if isinstance(item, discord.File) else discord.File(item) for item in files]
        if target.status_message_id is None:
            channel = await self.channel(target.post_channel_id)
            return await channel.send(content, files=attached, allowed_mentions=mentions, **kwargs)
        channel = await self.channel(target.post_channel_id if target.thread_id else target.channel_id)
        message = channel.get_partial_message(int(target.status_message_id))  # type: ignore[attr-defined]
        try:
            return await message.edit(content=content, attachments=attached, allowed_mentions=mentions, **kwargs)
        except discord.NotFound:
            return None

    async def flush_due(self) -> None:
        """Show the held-back states whose interval has passed."""
        now = time.monotonic()
        for job_id, pending in list(self._pending.items()):
            if now - self._last_edit.get(job_id, 0.0) < STATUS_EDIT_INTERVAL_S:
                continue
            target = await get_discord_job(self.bot.db, job_id)
            self._pending.pop(job_id, None)
            if target is None:
                continue
            self._last_edit[job_id] = now
            try:
                await self._edit(target, pending.content, [p for p in pending.files if p.is_file()], None, False)
            except discord.HTTPException as error:
                log.warning("could not update the status of job %s: %s", job_id, error)
