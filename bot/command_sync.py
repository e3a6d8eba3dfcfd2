"""Sync slash commands with Discord only when their definition changed.

Discord limits how many commands an application may create per day, so the bot hashes
the JSON it would upload and skips the upload when the last sync (recorded in the data
folder) had the same hash. PAWTRAIT_DEV_GUILD syncs to one server instead: server
commands appear at once, global ones can take a while to reach every client.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import discord
from discord import app_commands

from storage.files import atomic_write_bytes

log = logging.getLogger(__name__)


def command_payload(tree: app_commands.CommandTree, guild: discord.abc.Snowflake | None) -> list[dict]:
    """The exact JSON `tree.sync(guild=guild)` would send."""
    return [command.to_dict(tree) for command in tree.get_commands(guild=guild)]


def payload_hash(payload: list[dict], target: str) -> str:
    blob = json.dumps({"target": target, "commands": payload}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


async def sync_if_changed(tree: app_commands.CommandTree, record: Path, dev_guild: int | None) -> bool:
    """Upload the commands (to `dev_guild`, else globally) unless `record` says they are current.

    Returns whether an upload happened.
    """
    guild = discord.Object(dev_guild) if dev_guild else None
    if guild is not None:
        tree.copy_global_to(guild=guild)
    target = f"guild:{dev_guild}" if dev_guild else "global"
    digest = payload_hash(command_payload(tree, guild), target)
    if record.is_file() and record.read_text(encoding="utf-8").strip() == digest:
        log.info("slash commands unchanged since the last sync (%s); not uploading", target)
        return False
    await tree.sync(guild=guild)
    atomic_write_bytes(record, (digest + "\n").encode())
    log.info("synced slash commands (%s)", target)
    return True
