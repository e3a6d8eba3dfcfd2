"""A fake Discord (gateway websocket + REST) that the unmodified discord.py client talks to.

Tests start it on loopback, point the bot at it with DISCORD_API_BASE / DISCORD_GATEWAY_URL,
then act as members: fire slash commands, click buttons, react, post messages with files,
and await what the bot answers. Everything the bot sends is kept (messages with every edit,
uploaded files as bytes, command syncs, interaction callbacks) so tests can assert on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote

from aiohttp import WSMsgType, web

from .payloads import (
    ALL_PERMISSIONS,
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    MEMBER_PERMISSIONS,
    Channel,
    Guild,
    Member,
    User,
    message_payload,
    snowflake,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

EPHEMERAL = 1 << 6
# Discord's own limits on what a message may carry (it answers 400, code 50035, beyond them).
CONTENT_LIMIT = 2000
EMBEDS_LIMIT = 10
EMBED_TEXT_LIMITS = {"title": 256, "description": 4096}
EMBEDS_TOTAL_LIMIT = 6000


@dataclass(frozen=True)
class Pings:
    """Whom Discord notifies for a message: @everyone/@here, role ids and member ids."""

    everyone: bool
    roles: frozenset[str]
    users: frozenset[str]


def pings(body: dict[str, Any]) -> Pings:
    """Resolve the mentions in a message's content as Discord does: without `allowed_mentions`
    everything in the content pings; with it, only what its `parse` or id lists allow."""
    content = body.get("content") or ""
    allowed = body.get("allowed_mentions")
    parse = {"everyone", "roles", "users"} if allowed is None else set(allowed.get("parse") or [])
    listed_users = {str(u) for u in (allowed or {}).get("users") or []}
    listed_roles = {str(r) for r in (allowed or {}).get("roles") or []}
    users = set(re.findall(r"<@!?(\d+)>", content))
    roles = set(re.findall(r"<@&(\d+)>", content))
    return Pings(
        everyone="everyone" in parse and re.search(r"@(everyone|here)\b", content) is not None,
        roles=frozenset(roles if "roles" in parse else roles & listed_roles),
        users=frozenset(users if "users" in parse else users & listed_users),
    )


def over_discord_limits(body: dict[str, Any]) -> str | None:
    """What of a message body Discord would refuse as an invalid form body, or None."""
    if len(body.get("content") or "") > CONTENT_LIMIT:
        return f"content: Must be {CONTENT_LIMIT} or fewer in length."
    embeds = body.get("embeds") or []
    if len(embeds) > EMBEDS_LIMIT:
        return f"embeds: Must be {EMBEDS_LIMIT} or fewer in length."
    total = 0
    for index, embed in enumerate(embeds):
        for key, limit in EMBED_TEXT_LIMITS.items():
            total += len(embed.get(key) or "")
            if len(embed.get(key) or "") > limit:
                return f"embeds.{index}.{key}: Must be {limit} or fewer in length."
        total += len((embed.get("footer") or {}).get("text") or "")
    if total > EMBEDS_TOTAL_LIMIT:
        return f"embeds: Embed size exceeds maximum size of {EMBEDS_TOTAL_LIMIT}"
    return None


class FakeTimeout(AssertionError):
    """What a test waited for did not happen in time; says what it was waiting for."""


@dataclass
class StoredMessage:
    """A message in a channel, with every version of it and the files it carried."""

    payload: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    reactions: dict[str, set[str]] = field(default_factory=dict)
    deleted: bool = False

    @property
    def id(self) -> str:
        return self.payload["id"]

    @property
    def channel_id(self) -> str:
        return self.payload["channel_id"]

    @property
    def content(self) -> str:
        return self.payload["content"]

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return self.payload["embeds"]

    @property
    def author_id(self) -> str:
        return self.payload["author"]["id"]

    @property
    def ephemeral(self) -> bool:
        return bool(self.payload["flags"] & EPHEMERAL)

    def text(self) -> str:
        """Content plus embed titles, descriptions and fields, for plain-words assertions."""
        parts = [self.content]
        for embed in self.embeds:
            parts += [embed.get("title", ""), embed.get("description", "")]
            parts += [f"{f.get('name', '')} {f.get('value', '')}" for f in embed.get("fields", [])]
            parts.append((embed.get("footer") or {}).get("text", ""))
        return "\n".join(p for p in parts if p)

    def custom_ids(self) -> list[str]:
        found = []
        for row in self.payload["components"]:
            for item in row.get("components", []):
                if "custom_id" in item:
                    found.append(item["custom_id"])
        return found

    def button(self, label_or_emoji: str) -> str:
        """The custom_id of the button whose label or emoji contains the text."""
        for row in self.payload["components"]:
            for item in row.get("components", []):
                emoji = (item.get("emoji") or {}).get("name", "")
                if label_or_emoji in (item.get("label") or "") or label_or_emoji == emoji:
                    return item["custom_id"]
        raise AssertionError(f"no button {label_or_emoji!r} on message: {self.payload['components']}")


@dataclass
class SentRecord:
    """One request by which the bot posted or edited a message, as Discord accepted it."""

    route: str
    body: dict[str, Any]
    files: dict[str, bytes]

    @property
    def content(self) -> str:
        return self.body.get("content") or ""

    @property
    def pings(self) -> Pings:
        return pings(self.body)


@dataclass
class InteractionRecord:
    """One interaction the fake sent, and everything the bot answered to it."""

    id: str
    token: str
    payload: dict[str, Any]
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    original_id: str | None = None
    followup_ids: list[str] = field(default_factory=list)
    autocomplete: list[dict[str, Any]] | None = None
    modal: dict[str, Any] | None = None


class FakeDiscord:
    """The fake Discord: call `start()`, add guilds and members, then drive the bot."""

    def __init__(self) -> None:
        self.application_id = snowflake()
        self.bot = User(self.application_id, "Pawtrait", bot=True)
        self.token = "fake-token-" + secrets.token_hex(4)
        self.guilds: dict[str, Guild] = {}
        self.channels: dict[str, Channel] = {}
        self.users: dict[str, User] = {}
        self.messages: dict[str, StoredMessage] = {}
        self.interactions: dict[str, InteractionRecord] = {}
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[str, list[dict[str, Any]]] = {}
        self.command_syncs: list[tuple[str | None, list[dict[str, Any]]]] = []
        self.identifies = 0
        self.sent: list[SentRecord] = []  # every post and edit the bot made, in order
        self.refused: list[tuple[str, str]] = []  # (route, why) of each post or edit refused as Discord would
        # What interactions report as the upload limit (Discord: 10 MiB, more with server boosts).
        self.attachment_size_limit = 25 * 1024 * 1024
        self._files: dict[str, bytes] = {}  # attachment id -> bytes, served at /attachments/
        self._sockets: list[web.WebSocketResponse] = []
        self._seq = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{id}/{filename}", self._attachment)
        api = "/api/v10"
        routes = [
            ("GET", "/users/@me", self._me),
            ("GET", "/oauth2/applications/@me", self._application),
            ("GET", "/applications/{app}/commands", self._get_commands),
            ("PUT", "/applications/{app}/commands", self._put_commands),
            ("GET", "/applications/{app}/guilds/{guild}/commands", self._get_commands),
            ("PUT", "/applications/{app}/guilds/{guild}/commands", self._put_commands),
            ("POST", "/interactions/{id}/{token}/callback", self._callback),
            ("POST", "/webhooks/{app}/{token}", self._followup),
            ("GET", "/webhooks/{app}/{token}/messages/{mid}", self._get_message),
            ("PATCH", "/webhooks/{app}/{token}/messages/{mid}", self._edit_message),
            ("DELETE", "/webhooks/{app}/{token}/messages/{mid}", self._delete_webhook_message),
            ("GET", "/channels/{cid}", self._get_channel),
            ("POST", "/channels/{cid}/messages", self._create_message),
            ("GET", "/channels/{cid}/messages/{mid}", self._get_message),
            ("PATCH", "/channels/{cid}/messages/{mid}", self._edit_message),
            ("DELETE", "/channels/{cid}/messages/{mid}", self._delete_message),
            ("PUT", "/channels/{cid}/messages/{mid}/reactions/{emoji}/@me", self._add_own_reaction),
            ("DELETE", "/channels/{cid}/messages/{mid}/reactions/{emoji}/@me", self._remove_own_reaction),
            ("POST", "/channels/{cid}/messages/{mid}/threads", self._thread_from_message),
            ("POST", "/channels/{cid}/threads", self._thread),
            ("POST", "/users/@me/channels", self._dm),
            ("GET", "/guilds/{guild}/members/{uid}", self._get_member),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, api + path, handler)
        app.router.add_route("*", api + "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    def bot_env(self) -> dict[str, str]:
        """Environment variables that point the bot at this fake."""
        return {"DISCORD_TOKEN": self.token, "DISCORD_API_BASE": self.api_base, "DISCORD_GATEWAY_URL": self.gateway_url}

    # ---- world building ----------------------------------------------------------------------

    def add_guild(self, name: str, owner: str = "owner") -> Guild:
        guild = Guild(snowflake(), name, owner_id="")
        self.guilds[guild.id] = guild
        guild.owner_id = self.add_member(guild, owner, ALL_PERMISSIONS).id
        self.add_channel(guild, "general")
        return guild

    def add_member(self, guild: Guild, name: str, permissions: int = MEMBER_PERMISSIONS) -> Member:
        user = next((u for u in self.users.values() if u.name == name), None) or User(snowflake(), name)
        self.users[user.id] = user
        member = Member(user, guild.id, permissions)
        guild.members[user.id] = member
        return member

    def add_moderator(self, guild: Guild, name: str) -> Member:
        return self.add_member(guild, name, MEMBER_PERMISSIONS | MANAGE_GUILD | MANAGE_MESSAGES)

    def add_channel(self, guild: Guild, name: str, nsfw: bool = False) -> Channel:
        """A text channel (`nsfw`: age-restricted); add it before the bot connects, as a server's setup."""
        channel = Channel(snowflake(), name, guild.id, nsfw=nsfw)
        guild.channels[channel.id] = channel
        self.channels[channel.id] = channel
        return channel

    def channel(self, guild: Guild, name: str) -> Channel:
        return next(c for c in guild.channels.values() if c.name == name)

    async def add_thread(self, parent: Channel, name: str) -> Channel:
        """A thread in `parent` started by a member (the bot hears of it as THREAD_CREATE)."""
        return await self._new_thread(parent, name)

    # ---- gateway -----------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None}))
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            op = frame.get("op")
            if op == 1:
                await ws.send_str(json.dumps({"op": 11, "d": None}))
            elif op == 2:
                await self._identify(ws)
            elif op == 6:
                # No session replay here: make the client identify afresh.
                await ws.send_str(json.dumps({"op": 9, "d": False}))
        if ws in self._sockets:
            self._sockets.remove(ws)
        return ws

    async def _identify(self, ws: web.WebSocketResponse) -> None:
        self.identifies += 1
        # A reconnecting client replaces the previous connection.
        for old in list(self._sockets):
            self._sockets.remove(old)
        self._sockets.append(ws)
        ready = {
            "v": 10,
            "user": self.bot.payload(),
            "session_id": secrets.token_hex(8),
            "resume_gateway_url": self.gateway_url,
            "application": {"id": self.application_id, "flags": 0},
            "guilds": [{"id": gid, "unavailable": True} for gid in self.guilds],
            "private_channels": [],
            "relationships": [],
        }
        await self._send(ws, "READY", ready)
        for guild in self.guilds.values():
            await self._send(ws, "GUILD_CREATE", guild.payload(self.bot))

    async def _send(self, ws: web.WebSocketResponse, event: str, data: dict[str, Any]) -> None:
        self._seq += 1
        await ws.send_str(json.dumps({"op": 0, "t": event, "s": self._seq, "d": data}))

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a gateway event to the connected bot."""
        for ws in list(self._sockets):
            try:
                await self._send(ws, event, data)
            except ConnectionError:
                self._sockets.remove(ws)

    @property
    def connected(self) -> bool:
        return bool(self._sockets)

    # ---- REST helpers ------------------------------------------------------------------------

    @staticmethod
    def _json(data: Any, status: int = 200) -> web.Response:
        # Exactly `application/json`: discord.py treats anything else (even with a charset) as text.
        return web.Response(status=status, body=json.dumps(data).encode(), headers={"Content-Type": "application/json"})

    def _error(self, status: int, code: int, message: str) -> web.Response:
        return self._json({"code": code, "message": message}, status)

    async def _read_body(self, request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
        """JSON body, or multipart payload_json + files[n]; returns (payload, {filename: bytes})."""
        if request.content_type.startswith("multipart/"):
            payload: dict[str, Any] = {}
            uploads: dict[str, tuple[str, bytes]] = {}
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":
                    payload = json.loads(await part.text())
                elif part.name and part.name.startswith("files["):
                    index = part.name[len("files[") : -1]
                    uploads[index] = (part.filename or f"file{index}", bytes(await part.read()))
            return payload, {name: data for name, data in uploads.values()}
        if request.can_read_body:
            return await request.json(), {}
        return {}, {}

    def _refuse_or_record(self, request: web.Request, body: dict[str, Any], files: dict[str, bytes]) -> web.Response | None:
        """Refuse a post or edit as Discord does (over-long text: 400 code 50035; uploads over the
        limit: 413 code 40005), else keep it in `sent`."""
        route = f"{request.method} {request.path}"
        problem = over_discord_limits(body)
        if problem is not None:
            self.refused.append((route, problem))
            return self._error(400, 50035, f"Invalid Form Body: {problem}")
        if sum(len(data) for data in files.values()) > self.attachment_size_limit:
            self.refused.append((route, "request entity too large"))
            return self._error(413, 40005, "Request entity too large")
        self.sent.append(SentRecord(route, body, files))
        return None

    def _attachments(self, files: dict[str, bytes]) -> list[dict[str, Any]]:
        result = []
        for filename, data in files.items():
            attachment_id = snowflake()
            result.append(self._attachment_payload(attachment_id, filename, data))
            self._files[attachment_id] = data
        return result

    def _attachment_payload(self, attachment_id: str, filename: str, data: bytes) -> dict[str, Any]:
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        url = f"{self.base_url}/attachments/{attachment_id}/{filename}"
        return {"id": attachment_id, "filename": filename, "size": len(data), "url": url, "proxy_url": url,
                "content_type": content_type}

    async def _store_message(
        self,
        channel: Channel,
        author: User,
        body: dict[str, Any],
        files: dict[str, bytes],
        interaction: dict[str, Any] | None = None,
        dispatch: bool = True,
    ) -> StoredMessage:
        attachments = self._attachments(files)
        payload = message_payload(snowflake(), channel, author, body, attachments, interaction=interaction)
        stored = StoredMessage(payload, files=dict(files), history=[payload])
        self.messages[stored.id] = stored
        if dispatch and not stored.ephemeral:
            await self.dispatch("MESSAGE_CREATE", payload)
        return stored

    def _apply_edit(self, stored: StoredMessage, body: dict[str, Any], files: dict[str, bytes]) -> None:
        new = dict(stored.payload)
        for key in ("content", "embeds", "components", "flags"):
            if key in body and body[key] is not None:
                new[key] = body[key]
        if "attachments" in body or files:
            kept_ids = {str(a.get("id")) for a in body.get("attachments") or []}
            kept = [a for a in stored.payload["attachments"] if a["id"] in kept_ids]
            new["attachments"] = kept + self._attachments(files)
            kept_names = {a["filename"] for a in kept}
            stored.files = {n: d for n, d in stored.files.items() if n in kept_names}
            stored.files.update(files)
        new["edited_timestamp"] = new["timestamp"]
        stored.payload = new
        stored.history.append(new)

    def _message(self, message_id: str) -> StoredMessage | None:
        stored = self.messages.get(message_id)
        return None if stored is None or stored.deleted else stored

    # ---- REST: identity and commands ---------------------------------------------------------

    async def _unknown(self, request: web.Request) -> web.Response:
        log.warning("fake discord: unhandled %s %s", request.method, request.path)
        return self._error(404, 0, f"fake discord does not implement {request.method} {request.path}")

    async def _me(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bot {self.token}":
            return self._error(401, 0, "401: Unauthorized")
        return self._json(self.bot.payload())

    async def _application(self, request: web.Request) -> web.Response:
        return self._json({"id": self.application_id, "name": "Pawtrait", "icon": None, "description": "",
                           "bot_public": True, "bot_require_code_grant": False, "verify_key": "0" * 64,
                           "flags": 0, "owner": self.users.get(next(iter(self.users), ""), self.bot).payload(),
                           "team": None, "rpc_origins": []})

    async def _get_commands(self, request: web.Request) -> web.Response:
        guild_id = request.match_info.get("guild")
        return self._json(self.guild_commands.get(guild_id, []) if guild_id else self.global_commands)

    async def _put_commands(self, request: web.Request) -> web.Response:
        guild_id = request.match_info.get("guild")
        body = await request.json()
        commands = []
        for command in body:
            command = {"description": "", "options": [], "default_member_permissions": None, "nsfw": False,
                       "type": 1, **command, "id": snowflake(), "application_id": self.application_id,
                       "version": snowflake()}
            if guild_id:
                command["guild_id"] = guild_id
            commands.append(command)
        self.command_syncs.append((guild_id, commands))
        if guild_id:
            self.guild_commands[guild_id] = commands
        else:
            self.global_commands = commands
        return self._json(commands)

    def command(self, name: str, guild_id: str | None = None, type: int = 1) -> dict[str, Any]:
        """The synced command of that name (guild commands first), as Discord stored it."""
        pools = ([self.guild_commands.get(guild_id, [])] if guild_id else []) + [self.global_commands]
        for pool in pools:
            for command in pool:
                if command["name"] == name and command.get("type", 1) == type:
                    return command
        raise AssertionError(f"the bot has not synced a command {name!r} (type {type})")

    # ---- REST: interaction responses ---------------------------------------------------------

    async def _callback(self, request: web.Request) -> web.Response:
        record = self.interactions.get(request.match_info["id"])
        if record is None or record.token != request.match_info["token"]:
            return self._error(404, 10062, "Unknown interaction")
        if record.callbacks:
            return self._error(400, 40060, "Interaction has already been acknowledged.")
        body, files = await self._read_body(request)
        kind = body["type"]
        data = body.get("data") or {}
        if kind in (4, 7) and (refused := self._refuse_or_record(request, data, files)) is not None:
            return refused
        record.callbacks.append(body)
        channel = self.channels[record.payload["channel_id"]]
        message = None
        if kind == 8:  # autocomplete result
            record.autocomplete = data.get("choices", [])
        elif kind == 9:  # a form for the member to fill in
            record.modal = data
        elif kind in (4, 5):  # message, or "thinking..." to be edited later
            meta = {"id": record.id, "type": record.payload["type"], "user": self._invoker(record).payload()}
            stored = await self._store_message(channel, self.bot, data if kind == 4 else {"flags": data.get("flags")},
                                               files, interaction=meta)
            record.original_id = stored.id
            message = stored.payload
        elif kind in (6, 7):  # update the message the component was on
            target = self._message(record.payload["message"]["id"])
            record.original_id = target.id if target else None
            if kind == 7 and target is not None:
                self._apply_edit(target, data, files)
            message = target.payload if target else None
        response = {
            "interaction": {
                "id": record.id,
                "type": record.payload["type"],
                "response_message_id": record.original_id,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(int(data.get("flags") or 0) & EPHEMERAL),
            },
            "resource": {"type": kind, **({"message": message} if message else {})},
        }
        return self._json(response)

    def _invoker(self, record: InteractionRecord) -> User:
        return self.users[record.payload["member"]["user"]["id"]]

    def _record_by_token(self, token: str) -> InteractionRecord | None:
        return next((r for r in self.interactions.values() if r.token == token), None)

    async def _followup(self, request: web.Request) -> web.Response:
        record = self._record_by_token(request.match_info["token"])
        if record is None:
            return self._error(404, 10015, "Unknown Webhook")
        return await self._post(request, self.channels[record.payload["channel_id"]], record)

    def _webhook_target(self, request: web.Request) -> StoredMessage | None:
        record = self._record_by_token(request.match_info["token"])
        if record is None:
            return None
        mid = request.match_info["mid"]
        return self._message(record.original_id if mid == "@original" else mid)  # type: ignore[arg-type]

    async def _delete_webhook_message(self, request: web.Request) -> web.Response:
        stored = self._webhook_target(request)
        if stored is None:
            return self._error(404, 10008, "Unknown Message")
        stored.deleted = True
        return web.Response(status=204)

    # ---- REST: channels, messages, reactions, threads, DMs -----------------------------------

    async def _post(
        self, request: web.Request, channel: Channel, record: InteractionRecord | None = None
    ) -> web.Response:
        """The bot's message into `channel`, a follow-up of `record`'s interaction when given: one
        path for both routes, so that Discord's refusals apply alike."""
        body, files = await self._read_body(request)
        if (refused := self._refuse_or_record(request, body, files)) is not None:
            return refused
        stored = await self._store_message(channel, self.bot, body, files)
        if record is not None:
            record.followup_ids.append(stored.id)
        return self._json(stored.payload)

    def _channel_or_404(self, request: web.Request) -> Channel | None:
        return self.channels.get(request.match_info["cid"])

    async def _get_channel(self, request: web.Request) -> web.Response:
        channel = self._channel_or_404(request)
        return self._json(channel.payload()) if channel else self._error(404, 10003, "Unknown Channel")

    async def _create_message(self, request: web.Request) -> web.Response:
        channel = self._channel_or_404(request)
        if channel is None:
            return self._error(404, 10003, "Unknown Channel")
        return await self._post(request, channel)

    def _message_in(self, request: web.Request) -> StoredMessage | None:
        """The message a route names: by its channel, or by the interaction's webhook (GET and PATCH
        serve both routes alike)."""
        if "token" in request.match_info:
            return self._webhook_target(request)
        stored = self._message(request.match_info["mid"])
        if stored is None or stored.channel_id != request.match_info["cid"]:
            return None
        return stored

    async def _get_message(self, request: web.Request) -> web.Response:
        stored = self._message_in(request)
        return self._json(stored.payload) if stored else self._error(404, 10008, "Unknown Message")

    async def _edit_message(self, request: web.Request) -> web.Response:
        stored = self._message_in(request)
        if stored is None:
            return self._error(404, 10008, "Unknown Message")
        body, files = await self._read_body(request)
        if (refused := self._refuse_or_record(request, body, files)) is not None:
            return refused
        self._apply_edit(stored, body, files)
        return self._json(stored.payload)

    async def _delete_message(self, request: web.Request) -> web.Response:
        stored = self._message_in(request)
        if stored is None:
            return self._error(404, 10008, "Unknown Message")
        stored.deleted = True
        channel = self.channels[stored.channel_id]
        await self.dispatch("MESSAGE_DELETE", {"id": stored.id, "channel_id": channel.id, "guild_id": channel.guild_id})
        return web.Response(status=204)

    async def _add_own_reaction(self, request: web.Request) -> web.Response:
        stored = self._message_in(request)
        if stored is None:
            return self._error(404, 10008, "Unknown Message")
        stored.reactions.setdefault(unquote(request.match_info["emoji"]), set()).add(self.bot.id)
        return web.Response(status=204)

    async def _remove_own_reaction(self, request: web.Request) -> web.Response:
        stored = self._message_in(request)
        if stored is not None:
            stored.reactions.get(unquote(request.match_info["emoji"]), set()).discard(self.bot.id)
        return web.Response(status=204)

    async def _new_thread(self, parent: Channel, name: str, thread_id: str | None = None) -> Channel:
        thread = Channel(thread_id or snowflake(), name, parent.guild_id, type=11, parent_id=parent.id,
                         owner_id=self.bot.id)
        self.channels[thread.id] = thread
        self.guilds[parent.guild_id].channels[thread.id] = thread  # type: ignore[index]
        await self.dispatch("THREAD_CREATE", dict(thread.payload(), newly_created=True))
        return thread

    async def _thread_from_message(self, request: web.Request) -> web.Response:
        parent = self._channel_or_404(request)
        stored = self._message_in(request)
        if parent is None or stored is None:
            return self._error(404, 10008, "Unknown Message")
        body = await request.json()
        # Like Discord, a thread started from a message has that message's id.
        thread = await self._new_thread(parent, body["name"], thread_id=stored.id)
        return self._json(thread.payload())

    async def _thread(self, request: web.Request) -> web.Response:
        parent = self._channel_or_404(request)
        if parent is None:
            return self._error(404, 10003, "Unknown Channel")
        body = await request.json()
        thread = await self._new_thread(parent, body["name"])
        return self._json(thread.payload())

    async def _dm(self, request: web.Request) -> web.Response:
        body = await request.json()
        user = self.users[str(body["recipient_id"])]
        channel = next((c for c in self.channels.values() if c.type == 1 and c.recipient == user), None)
        if channel is None:
            channel = Channel(snowflake(), user.name, None, type=1, recipient=user)
            self.channels[channel.id] = channel
        return self._json(channel.payload())

    async def _get_member(self, request: web.Request) -> web.Response:
        guild = self.guilds.get(request.match_info["guild"])
        member = guild.members.get(request.match_info["uid"]) if guild else None
        return self._json(member.payload()) if member else self._error(404, 10007, "Unknown Member")

    async def _attachment(self, request: web.Request) -> web.Response:
        data = self._files.get(request.match_info["id"])
        if data is None:
            return web.Response(status=404)
        content_type = mimetypes.guess_type(request.match_info["filename"])[0] or "application/octet-stream"
        return web.Response(body=data, headers={"Content-Type": content_type})

    # ---- acting as members -------------------------------------------------------------------

    def _interaction_base(self, guild: Guild, member: Member, channel: Channel, kind: int) -> InteractionRecord:
        record = InteractionRecord(snowflake(), "itoken-" + secrets.token_hex(12), {})
        record.payload = {
            "id": record.id,
            "application_id": self.application_id,
            "type": kind,
            "token": record.token,
            "version": 1,
            "guild_id": guild.id,
            "channel_id": channel.id,
            "channel": channel.payload(),
            "member": member.payload(with_permissions=True),
            "app_permissions": str(ALL_PERMISSIONS),
            "locale": "en-US",
            "guild_locale": "en-US",
            "attachment_size_limit": self.attachment_size_limit,
            "entitlements": [],
            "authorizing_integration_owners": {"0": guild.id},
            "context": 0,
        }
        self.interactions[record.id] = record
        return record

    def _options(self, values: dict[str, Any], resolved: dict[str, Any],
                 command: dict[str, Any], focused: str | None = None) -> list[dict[str, Any]]:
        declared = {o["name"]: o for o in command.get("options", [])}
        options = []
        for name, value in values.items():
            if name not in declared:
                raise AssertionError(f"/{command['name']} has no option {name!r}; it has {sorted(declared)}")
            kind = declared[name]["type"]
            if kind == 11:  # attachment: (filename, bytes)
                filename, data = value
                attachment_id = snowflake()
                self._files[attachment_id] = data
                resolved.setdefault("attachments", {})[attachment_id] = self._attachment_payload(
                    attachment_id, filename, data)
                value = attachment_id
            elif kind == 7:  # channel: pass the Channel
                resolved.setdefault("channels", {})[value.id] = dict(value.payload(), permissions=str(ALL_PERMISSIONS))
                value = value.id
            elif kind == 6:  # user: pass the Member (Discord resolves the user and their membership)
                resolved.setdefault("users", {})[value.id] = value.user.payload()
                member = value.payload(with_permissions=True)
                member.pop("user")
                resolved.setdefault("members", {})[value.id] = member
                value = value.id
            option = {"name": name, "type": kind, "value": value}
            if name == focused:
                option["focused"] = True
            options.append(option)
        return options

    async def slash(self, guild: Guild, member: Member, name: str, /, channel: Channel | None = None,
                    options: dict[str, Any] | None = None, **values: Any) -> InteractionRecord:
        """Run `/name` as `member` in `guild` (a subcommand: `/settings block-words add`), in `channel`
        (default #general); attachment options take (filename, bytes), channel options a Channel, user
        options a Member; `options` holds those whose name clashes with these parameters (`channel`)."""
        values.update(options or {})
        top, *path = name.split()
        command = self.command(top, guild.id)
        channel = channel or self.channel(guild, "general")
        record = self._interaction_base(guild, member, channel, 2)
        resolved: dict[str, Any] = {}
        chain = [command]
        for part in path:  # down the groups to the subcommand, as Discord declared them
            found = next((o for o in chain[-1].get("options", []) if o["name"] == part and o["type"] in (1, 2)), None)
            if found is None:
                raise AssertionError(f"/{name}: /{top} has no subcommand or group {part!r}")
            chain.append(found)
        options = self._options(values, resolved, chain[-1])
        for node in reversed(chain[1:]):
            options = [{"name": node["name"], "type": node["type"], "options": options}]
        data = {"id": command["id"], "name": top, "type": 1, "options": options}
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        if resolved:
            data["resolved"] = resolved
        record.payload["data"] = data
        await self.dispatch("INTERACTION_CREATE", record.payload)
        return record

    async def autocomplete(self, guild: Guild, member: Member, name: str, focused: str, /,
                           timeout: float = 10, **values: Any) -> list[dict[str, Any]]:
        """The choices the bot offers while `member` types option `focused` of `/name`."""
        command = self.command(name, guild.id)
        record = self._interaction_base(guild, member, self.channel(guild, "general"), 4)
        record.payload["data"] = {"id": command["id"], "name": name, "type": 1,
                                  "options": self._options(values, {}, command, focused)}
        await self.dispatch("INTERACTION_CREATE", record.payload)
        await self.wait_until(lambda: record.autocomplete is not None, timeout, f"autocomplete for /{name}")
        return record.autocomplete  # type: ignore[return-value]

    async def context_menu(self, guild: Guild, member: Member, name: str, message: StoredMessage) -> InteractionRecord:
        """Run the message command `name` on `message`."""
        command = self.command(name, guild.id, type=3)
        channel = self.channels[message.channel_id]
        record = self._interaction_base(guild, member, channel, 2)
        record.payload["data"] = {"id": command["id"], "name": name, "type": 3, "target_id": message.id,
                                  "resolved": {"messages": {message.id: message.payload}}}
        await self.dispatch("INTERACTION_CREATE", record.payload)
        return record

    async def click(self, member: Member, message: StoredMessage, custom_id: str) -> InteractionRecord:
        """Press the button `custom_id` on `message` as `member`."""
        channel = self.channels[message.channel_id]
        guild = self.guilds[channel.guild_id]  # type: ignore[index]
        record = self._interaction_base(guild, member, channel, 3)
        record.payload["data"] = {"custom_id": custom_id, "component_type": 2}
        record.payload["message"] = message.payload
        await self.dispatch("INTERACTION_CREATE", record.payload)
        return record

    async def submit_modal(self, record: InteractionRecord, member: Member, values: dict[str, str],
                           timeout: float = 10) -> InteractionRecord:
        """Fill in the form the bot answered `record` with (fields matched by words of their label)."""
        await self.wait_until(lambda: record.modal is not None, timeout, "the bot to open a form")
        modal = record.modal or {}

        def answer(field: dict[str, Any]) -> dict[str, Any]:
            label = field.get("label", "")
            value = next((v for key, v in values.items() if key.lower() in label.lower()), field.get("value", ""))
            return {"type": 4, "custom_id": field["custom_id"], "value": value}

        components = []
        for row in modal.get("components", []):
            if row["type"] == 18:  # a label wrapping one field
                field = dict(row["component"], label=row.get("label", ""))
                components.append({"type": 18, "component": answer(field)})
            else:
                components.append({"type": 1, "components": [answer(f) for f in row.get("components", [])]})
        channel = self.channels[record.payload["channel_id"]]
        guild = self.guilds[record.payload["guild_id"]]
        submit = self._interaction_base(guild, member, channel, 5)
        submit.payload["data"] = {"custom_id": modal["custom_id"], "components": components}
        await self.dispatch("INTERACTION_CREATE", submit.payload)
        return submit

    async def post(self, member: Member, channel: Channel, content: str = "",
                   files: list[tuple[str, bytes]] | None = None,
                   components: list[dict[str, Any]] | None = None) -> StoredMessage:
        """A member posts a message (with files) in a channel; `components` gives it another
        message's buttons, as a forged click from elsewhere would carry them."""
        body = {"content": content, "components": components or []}
        return await self._store_message(channel, member.user, body, dict(files or []))

    async def react(self, member: Member, message: StoredMessage, emoji: str, add: bool = True) -> None:
        """A member adds (or removes) a unicode emoji reaction; the bot gets the raw gateway event."""
        users = message.reactions.setdefault(emoji, set())
        (users.add if add else users.discard)(member.id)
        channel = self.channels[message.channel_id]
        data: dict[str, Any] = {
            "user_id": member.id,
            "channel_id": channel.id,
            "message_id": message.id,
            "guild_id": channel.guild_id,
            "emoji": {"id": None, "name": emoji},
            "type": 0,
            "burst": False,
        }
        if add:
            data.update(member=member.payload(), message_author_id=message.author_id, burst_colors=[])
        await self.dispatch("MESSAGE_REACTION_ADD" if add else "MESSAGE_REACTION_REMOVE", data)

    # ---- waiting -----------------------------------------------------------------------------

    async def wait_until(self, check: Callable[[], T], timeout: float, what: str) -> T:
        """Poll `check` until it returns something truthy; fail with `what` after `timeout` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = check()
            if value:
                return value
            if loop.time() > deadline:
                raise FakeTimeout(f"timed out after {timeout:.0f}s waiting for {what}")
            await asyncio.sleep(0.05)

    def answered(self, record: InteractionRecord) -> bool:
        return bool(record.callbacks)

    def original(self, record: InteractionRecord) -> StoredMessage | None:
        return self._message(record.original_id) if record.original_id else None

    def followups(self, record: InteractionRecord) -> list[StoredMessage]:
        return [m for m in (self._message(i) for i in record.followup_ids) if m is not None]

    async def reply(self, record: InteractionRecord, timeout: float = 20,
                    check: Callable[[StoredMessage], bool] | None = None) -> StoredMessage:
        """The bot's visible answer: the original response once it is no longer 'thinking',
        else the first followup (optionally the first that passes `check`)."""
        def find() -> StoredMessage | None:
            candidates = []
            original = self.original(record)
            if original is not None and (original.text() or original.files or original.payload["components"]):
                candidates.append(original)
            candidates += self.followups(record)
            return next((m for m in candidates if check is None or check(m)), None)

        return await self.wait_until(find, timeout, f"the bot's reply to interaction {record.payload.get('data')}")

    def channel_messages(self, channel: Channel) -> list[StoredMessage]:
        return [m for m in self.messages.values() if m.channel_id == channel.id and not m.deleted]

    def threads(self, guild: Guild) -> list[Channel]:
        return [c for c in guild.channels.values() if c.is_thread]
