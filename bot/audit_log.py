"""One audit line per member action: every command, button and form leaves exactly one.

Commands are recorded in one place, when discord.py reports them done
(`on_app_command_completion`) or failed (the app's error handler); buttons and forms name
themselves with `begin` and are recorded the same two ways. What a command learns on the
way (the pet it resolved, the job it queued, the screening verdict) it adds with `note`;
the options the member typed fill the rest.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from storage.audit import record_audit

if TYPE_CHECKING:
    from bot.app import PawtraitBot

log = logging.getLogger(__name__)

# Commands that only show something: recording every look would bury what changed (their
# refusals and denials are recorded).
READ_ONLY = frozenset({"pets", "queue", "audit", "settings show", "settings block-words list"})
_FIELDS = ("prompt", "pet", "seed")  # options stored in their own columns; the others go to `detail`


def begin(interaction: discord.Interaction, command: str) -> None:
    """Name what a button or form does, for its line (commands are named by discord.py)."""
    interaction.extras["audit_command"] = command


def note(interaction: discord.Interaction, **fields: Any) -> None:
    """Add details to the line this interaction will leave: pet, checkpoint_id, seed, job_id, verdict…"""
    interaction.extras.setdefault("audit", {}).update(fields)


def command_name(interaction: discord.Interaction) -> str:
    named = interaction.extras.get("audit_command")
    if named:
        return named
    if isinstance(interaction.command, (app_commands.Command, app_commands.ContextMenu)):
        return interaction.command.qualified_name
    return f"button {(interaction.data or {}).get('custom_id', '?')}"


def _option_text(value: Any) -> str:
    if isinstance(value, discord.Attachment):
        return value.filename
    if isinstance(value, (discord.abc.User, discord.Member)):
        return f"<@{value.id}>"
    if isinstance(value, (discord.abc.GuildChannel, discord.Thread, app_commands.AppCommandChannel,
                          app_commands.AppCommandThread)):
        return f"<#{value.id}>"
    return str(value)


def _options(interaction: discord.Interaction) -> tuple[dict[str, Any], str]:
    """The typed options: those with a column of their own, and the rest as 'name=value' text."""
    if interaction.type is not discord.InteractionType.application_command:
        return {}, ""
    own: dict[str, Any] = {}
    rest = []
    for name, value in interaction.namespace:
        if name in _FIELDS and not isinstance(value, discord.Attachment):
            own[name] = value
        elif value is not None:
            rest.append(f"{name}={_option_text(value)}")
    return own, " ".join(rest)


async def record(bot: PawtraitBot, interaction: discord.Interaction, verdict: str, why: str | None = None) -> None:
    """Write the interaction's line; `verdict` ('done', 'refused', 'failed', 'denied') unless the
    command noted a more telling one (a screening verdict). Never fails the member's action."""
    command = command_name(interaction)
    if interaction.guild_id is None or (command in READ_ONLY and verdict == "done"):
        return
    fields, options = _options(interaction)
    fields.update(interaction.extras.get("audit", {}))
    verdict = fields.pop("verdict", verdict)
    detail = " · ".join(part for part in (options, why) if part) or None
    if fields.get("seed") is not None:
        fields["seed"] = int(fields["seed"])
    try:
        await record_audit(bot.db, str(interaction.guild_id), str(interaction.user.id), command, verdict,
                           detail=detail, at=interaction.created_at, **fields)
    except Exception:  # the action itself happened; a missing line is logged, not shown to the member
        log.exception("could not record the audit line of %s", command)
