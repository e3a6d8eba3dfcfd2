"""Discord API object shapes (as discord.py 2.7 parses them) for the fake server.

Only what the real client reads is filled in; every function returns a fresh dict so the
server can hand it out without callers mutating its state.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DISCORD_EPOCH_MS = 1420070400000

# Permission bits (https://discord.com/developers/docs/topics/permissions).
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_APPLICATION_COMMANDS = 1 << 31
SEND_MESSAGES_IN_THREADS = 1 << 38
CREATE_PUBLIC_THREADS = 1 << 35
MEMBER_PERMISSIONS = (
    VIEW_CHANNEL | SEND_MESSAGES | ADD_REACTIONS | EMBED_LINKS | ATTACH_FILES | READ_MESSAGE_HISTORY
    | USE_APPLICATION_COMMANDS | SEND_MESSAGES_IN_THREADS | CREATE_PUBLIC_THREADS
)
ALL_PERMISSIONS = (1 << 50) - 1

_counter = itertools.count(1)


def snowflake() -> str:
    """A unique, time-ordered id like Discord's (discord.py derives created_at from it)."""
    ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
    return str((ms << 22) | (next(_counter) & 0x3FFFFF))


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class User:
    id: str
    name: str
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.name,
            "global_name": self.name,
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }


@dataclass
class Member:
    user: User
    guild_id: str
    permissions: int = MEMBER_PERMISSIONS
    role_ids: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.user.id

    def payload(self, with_permissions: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "user": self.user.payload(),
            "roles": list(self.role_ids),
            "joined_at": "2024-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
            "avatar": None,
            "premium_since": None,
            "pending": False,
        }
        if with_permissions:
            data["permissions"] = str(self.permissions)
        return data


@dataclass
class Channel:
    id: str
    name: str
    guild_id: str | None
    type: int = 0  # 0 text, 1 DM, 11 public thread
    parent_id: str | None = None
    owner_id: str | None = None
    recipient: User | None = None
    nsfw: bool = False  # age-restricted; a thread has no flag of its own (clients follow its parent)

    @property
    def is_thread(self) -> bool:
        return self.type in (10, 11, 12)

    def payload(self) -> dict[str, Any]:
        if self.type == 1:
            return {"id": self.id, "type": 1, "recipients": [self.recipient.payload()] if self.recipient else [],
                    "last_message_id": None}
        data: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "name": self.name,
            "guild_id": self.guild_id,
            "position": 0,
            "permission_overwrites": [],
            "nsfw": self.nsfw,
            "parent_id": self.parent_id,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
        }
        if self.is_thread:
            data.update(
                owner_id=self.owner_id,
                message_count=0,
                member_count=1,
                thread_metadata={
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": now_iso(),
                    "locked": False,
                },
            )
        return data


@dataclass
class Guild:
    id: str
    name: str
    owner_id: str
    members: dict[str, Member] = field(default_factory=dict)
    channels: dict[str, Channel] = field(default_factory=dict)
    bot_role_id: str = field(default_factory=snowflake)

    def roles_payload(self) -> list[dict[str, Any]]:
        everyone = {"id": self.id, "name": "@everyone", "permissions": str(MEMBER_PERMISSIONS), "position": 0}
        bot_role = {"id": self.bot_role_id, "name": "Pawtrait", "permissions": str(ADMINISTRATOR), "position": 1,
                    "managed": True}
        return [everyone, bot_role]

    def payload(self, bot: User) -> dict[str, Any]:
        bot_member = Member(bot, self.id, ALL_PERMISSIONS, [self.bot_role_id])
        return {
            "id": self.id,
            "name": self.name,
            "owner_id": self.owner_id,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "features": [],
            "emojis": [],
            "stickers": [],
            "roles": self.roles_payload(),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "large": False,
            "unavailable": False,
            "member_count": len(self.members) + 1,
            "members": [m.payload() for m in self.members.values()] + [bot_member.payload()],
            "channels": [c.payload() for c in self.channels.values() if not c.is_thread],
            "threads": [c.payload() for c in self.channels.values() if c.is_thread],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "joined_at": "2024-01-01T00:00:00+00:00",
        }


def message_payload(
    message_id: str,
    channel: Channel,
    author: User,
    data: dict[str, Any],
    attachments: list[dict[str, Any]],
    edited: bool = False,
    interaction: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A full message object from what a client sent (content, embeds, components, flags)."""
    payload: dict[str, Any] = {
        "id": message_id,
        "channel_id": channel.id,
        "author": author.payload(),
        "content": data.get("content") or "",
        "timestamp": now_iso(),
        "edited_timestamp": now_iso() if edited else None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": attachments,
        "embeds": data.get("embeds") or [],
        "components": data.get("components") or [],
        "pinned": False,
        "type": 0 if interaction is None else 20,
        "flags": int(data.get("flags") or 0),
    }
    if channel.guild_id:
        payload["guild_id"] = channel.guild_id
    if interaction is not None:
        payload["interaction_metadata"] = interaction
    return payload
