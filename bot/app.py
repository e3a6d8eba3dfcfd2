"""The Pawtrait bot: a `commands.Bot` that loads one cog per area and relays job events.

Intents: guilds (servers, channels, threads), guild messages (the bot's own posts and the
message a "Teach Pawtrait" context menu points at arrive with the interaction itself) and
guild reactions (votes). None of them is privileged: slash commands need no Message
Content or Members intent.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import discord
from discord import app_commands
from discord.ext import commands

from bot import audit_log
from bot.checks import UserError, member_allowed
from bot.command_sync import sync_if_changed
from bot.copies_sweep import drop_deleted_copies_forever
from bot.formatting import MESSAGE_LIMIT, clip
from bot.job_messages import JobMessages
from bot.job_relay import JobRelay
from bot.presses import PressClaims
from bot.safety import RecentInteractions
from bot.settings import BotSettings
from config.settings import Settings
from storage.connect import open_storage
from storage.db import Database
from storage.files import DataDir, FileMissing, FileStore

log = logging.getLogger(__name__)

COGS = (
    "bot.cogs.teach",
    "bot.cogs.train",
    "bot.cogs.lora",
    "bot.cogs.imagine",
    "bot.cogs.pets",
    "bot.cogs.queue",
    "bot.cogs.settings",
    "bot.cogs.audit",
)
COMMANDS_HASH_FILE = "discord-commands.sha256"


def intents() -> discord.Intents:
    chosen = discord.Intents.none()
    chosen.guilds = True
    chosen.guild_messages = True
    chosen.guild_reactions = True
    return chosen


class PawtraitTree(app_commands.CommandTree):
    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return await member_allowed(interaction)


class PawtraitBot(commands.Bot):
    def __init__(self, settings: Settings, bot_settings: BotSettings, *, relay_interval_s: float = 1.0) -> None:
        # Pings nobody unless a message allows its one member (bot.mentions): member text such as
        # a pet called "@everyone" must never notify a server.
        super().__init__(
            command_prefix=commands.when_mentioned, intents=intents(), help_command=None,
            allowed_mentions=discord.AllowedMentions.none(), tree_cls=PawtraitTree,
        )
        self.settings = settings
        self.bot_settings = bot_settings
        self.data = DataDir(settings.data_dir)  # this host's own folder: a cache and the commands hash
        # The records and the files, shared with the workers (on this host or others). A pool
        # of connections: concurrent interactions never share a transaction.
        self.storage = open_storage(settings)
        self.store: FileStore = self.storage.files
        self.db: Database
        self.job_messages = JobMessages(self)
        self.asked = RecentInteractions()  # who to tell, ephemerally, about pictures a strict server withheld
        self.presses = PressClaims()  # 📌 and 🚩 act once, however often they are pressed
        self.relay = JobRelay(self, interval_s=relay_interval_s)
        self.tree.on_error = self.on_app_command_error

    async def setup_hook(self) -> None:
        self.db = (await self.storage.open()).db
        for cog in COGS:
            await self.load_extension(cog)
        await sync_if_changed(self.tree, self.data.root / COMMANDS_HASH_FILE, self.bot_settings.dev_guild)
        await self.relay.start()
        self.copies_sweep = asyncio.create_task(
            drop_deleted_copies_forever(self.store, self.settings.cache_sweep_s), name="pawtrait-copies-sweep"
        )

    async def local_copies(self, keys: list[str]) -> list[Path]:
        """Local files of these file-store keys (fetched into this host's cache when the store is
        remote), skipping any that no longer exist (deleted by retention or `/forget`)."""
        found = []
        for key in keys:
            try:
                found.append(await self.store.local_path(key))
            except FileMissing:
                log.info("file %s is gone; not attaching it", key)
        return found

    async def close(self) -> None:
        await self.relay.stop()
        if hasattr(self, "copies_sweep"):
            self.copies_sweep.cancel()
        await super().close()
        await self.storage.close()

    async def on_ready(self) -> None:
        log.info("connected as %s to %d servers", self.user, len(self.guilds))

    async def on_app_command_completion(self, interaction: discord.Interaction, command: object) -> None:
        await audit_log.record(self, interaction, "done")

    async def on_app_command_error(self, interaction: discord.Interaction, error: Exception) -> None:
        """Plain words, to the member alone; unexpected errors are logged and apologised for.
        Buttons and forms answer their refusals here too, so every refusal is recorded once."""
        original = getattr(error, "original", error)
        verdict = "refused"
        if isinstance(original, UserError):
            text = str(original)
        elif isinstance(error, app_commands.CheckFailure):
            text = str(error) or "You can't use this command here."
        else:
            log.error("%s failed", audit_log.command_name(interaction), exc_info=original)
            text = "Something went wrong on my side; nothing was changed. Please try again in a minute."
            verdict = "failed"
        await audit_log.record(self, interaction, verdict, text)  # first: the line is there once the member sees why
        await send_ephemeral(interaction, text)


async def send_ephemeral(interaction: discord.Interaction, text: str) -> None:
    """Answer privately; after a defer, the 'thinking' message becomes the answer (Discord
    keeps the visibility the defer chose, so cogs check what they can before deferring)."""
    text = clip(text, MESSAGE_LIMIT)  # errors quote what the member typed
    if interaction.response.is_done():
        await interaction.edit_original_response(content=text, attachments=[], view=None)
    else:
        await interaction.response.send_message(text, ephemeral=True)
