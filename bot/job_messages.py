"""Showing a job in Discord: its status message, edited in place, and posts beside it.

Cogs call `status` for a job's one message (a training's status in its thread, a
generation's preview and result under the command) and `send` for other posts. Edits are
rate limited per job (Discord limits edits); the newest state is kept and shown once the
interval has passed (`flush_due`, called by the relay), so the last state always lands.
A message pings nobody unless `ping` names the one member it is for (bot.mentions), its
text is cut to Discord's limit, since it quotes prompts and names members typed, and its
files are made to fit the server's upload limit (bot.uploads), which Discord tells each
interaction and the bot remembers per server.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from bot.formatting import MESSAGE_LIMIT, clip
from bot.mentions import only
from bot.uploads import Upload, fit
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
        self._upload_limits: dict[int, int] = {}  # guild id -> bytes, as its interactions last said
        bot.add_listener(self._learn_upload_limit, "on_interaction")

    async def _learn_upload_limit(self, interaction: discord.Interaction) -> None:
        """Discord sends the server's upload limit with every interaction; `guild.filesize_limit`
        is only discord.py's guess from the boost tier."""
        if interaction.guild_id is not None:
            self._upload_limits[interaction.guild_id] = interaction.filesize_limit

    def upload_limit(self, channel: discord.abc.Messageable) -> int:
        """Bytes of files one message may carry in this channel's server."""
        guild = getattr(channel, "guild", None)
        learned = self._upload_limits.get(guild.id) if guild is not None else None
        return learned or getattr(guild, "filesize_limit", discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES)

    async def _fitted(
        self, channel: discord.abc.Messageable, content: str, files: Sequence[Path | discord.File]
    ) -> tuple[str, list[discord.File]]:
        return await fitted(content, files, self.upload_limit(channel))
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
        self, channel_id: str, content: str, files: list[Path | discord.File] | None = None, ping: str | None = None
    ) -> discord.Message | None:
        """Post a message; `ping` is the member id it notifies (nobody else, whatever the text says)."""
        channel = await self.channel(channel_id)
        content, attached = await self._fitted(channel, content, files or [])
        return await channel.send(content, files=attached, allowed_mentions=_mentions(ping))

    async def status(
        self,
        target: DiscordJob,
        content: str,
        files: list[Path | discord.File] | None = None,
        force: bool = False,
        interval_s: float = STATUS_EDIT_INTERVAL_S,
        view: discord.ui.View | None = None,
        ping: str | None = None,
    ) -> discord.Message | None:
        """Edit the job's status message now, or remember the newest state for later."""
        now = time.monotonic()
        if not force and now - self._last_edit.get(target.job_id, 0.0) < interval_s:
            self._pending[target.job_id] = PendingEdit(content, [item for item in files or [] if isinstance(item, Path)])
            return None
        self._pending.pop(target.job_id, None)
        self._last_edit[target.job_id] = now
        return await self._edit(target, content, files or [], view, ping)

    async def _edit(
        self, target: DiscordJob, content: str, files: list[Path | discord.File], view: discord.ui.View | None,
        ping: str | None,
    ) -> discord.Message | None:
        mentions = _mentions(ping)
        kwargs: dict[str, Any] = {"view": view} if view is not None else {}
        if target.status_message_id is None:
            channel = await self.channel(target.post_channel_id)
            content, attached = await self._fitted(channel, content, files)
            return await channel.send(content, files=attached, allowed_mentions=mentions, **kwargs)
        channel = await self.channel(target.post_channel_id if target.thread_id else target.channel_id)
        content, attached = await self._fitted(channel, content, files)
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
                await self._edit(target, pending.content, [p for p in pending.files if p.is_file()], None, None)
            except discord.HTTPException as error:
                log.warning("could not update the status of job %s: %s", job_id, error)


async def fitted(content: str, files: Sequence[Path | discord.File], limit: int) -> tuple[str, list[discord.File]]:
    """A message's text and files within Discord's limits: files over the upload `limit` (bytes,
    all files together) are made smaller (in a thread: re-encoding takes a while), any left out is said."""
    if not files:
        return clip(content, MESSAGE_LIMIT), []
    uploads, left_out = await asyncio.to_thread(_fit, files, limit)
    attached = [discord.File(io.BytesIO(upload.data), upload.filename) for upload in uploads]
    if not left_out:
        return clip(content, MESSAGE_LIMIT), attached
    note = (f"⚠️ {left_out} picture{'s' * (left_out > 1)} did not fit this server's upload limit, even made "
            f"smaller; {'they are' if left_out > 1 else 'it is'} kept, and the bot's operator can send "
            f"{'them' if left_out > 1 else 'it'} to you.")
    return clip(content, MESSAGE_LIMIT - len(note) - 1) + "\n" + note, attached


def _fit(files: Sequence[Path | discord.File], limit: int) -> tuple[list[Upload], int]:
    """`bot.uploads.fit` of the files' bytes (read here, in the thread, too)."""
    uploads = [Upload(f.name, f.read_bytes()) if isinstance(f, Path) else Upload(f.filename, f.fp.read()) for f in files]
    return fit(uploads, limit)


def _mentions(ping: str | None) -> discord.AllowedMentions:
    return discord.AllowedMentions.none() if ping is None else only(ping)
