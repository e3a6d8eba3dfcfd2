"""The bot's own configuration: the Discord token, which Discord endpoint to talk to, and
the development server that gets commands instantly.

DISCORD_API_BASE and DISCORD_GATEWAY_URL point the unmodified discord.py client at another
endpoint (an HTTP proxy, or the tests' fake Discord) by setting the two class attributes
discord.py reads every URL from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import discord
import yarl

from config.settings import environment, positive_int, read


def _url(*schemes: str):
    def parse(raw: str) -> str:
        parsed = yarl.URL(raw)
        if parsed.scheme not in schemes or not parsed.host:
            raise ValueError(raw)
        return raw.rstrip("/")

    return parse


@dataclass(frozen=True)
class BotSettings:
    token: str | None = field(default=None, repr=False)  # a secret: never in a repr, a log line or a traceback
    api_base: str | None = None  # e.g. https://discord.com/api/v10 (None = Discord's own)
    gateway_url: str | None = None  # e.g. wss://gateway.discord.gg (None = Discord's own)
    dev_guild: int | None = None  # commands sync to this server instantly instead of globally

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BotSettings:
        env = environment() if env is None else env
        return cls(
            token=read(env, "DISCORD_TOKEN", None, str, "the bot token from the Discord developer portal"),
            api_base=read(env, "DISCORD_API_BASE", None, _url("http", "https"), "an http(s) URL ending in /api/v10"),
            gateway_url=read(env, "DISCORD_GATEWAY_URL", None, _url("ws", "wss"), "a ws(s):// URL"),
            dev_guild=read(env, "PAWTRAIT_DEV_GUILD", None, positive_int, "a server id (a number)"),
        )

    def apply_endpoints(self) -> None:
        """Point discord.py's REST and gateway at the configured endpoints."""
        if self.api_base:
            discord.http.Route.BASE = self.api_base
        if self.gateway_url:
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
