"""Running `pawtrait bot` (and, on "many hosts", its worker) as real processes against the fake Discord."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import RowMapping

from config.settings import Settings
from storage.db import Database

from conftest import distributed, settings_env
from fake_discord import FakeDiscord
from fake_discord.payloads import Channel, Guild, Member

REPO = Path(__file__).resolve().parent.parent


class BotProcess:
    """`python -m cli.main bot` with its output in a log file (shown when a test fails).

    With `worker_env` (the distributed installation) the bot never starts workers itself, as
    on a bot-only host; a `pawtrait worker` process with its own local folder runs beside it
    whenever the bot would otherwise have started one.
    """

    def __init__(self, env: dict[str, str], log_path: Path, worker_env: dict[str, str] | None = None) -> None:
        self.env = env
        self.log_path = log_path
        self.worker_env = worker_env
        self.process: asyncio.subprocess.Process | None = None
        self.worker: asyncio.subprocess.Process | None = None

    async def start(self, fake: FakeDiscord, timeout: float = 60, **extra_env: str) -> None:
        identified = fake.identifies
        env = dict(self.env, **extra_env)
        if self.worker_env is not None:
            if env.get("PAWTRAIT_WORKERS") != "0":
                self.worker = await self._spawn(["-m", "engine.gpu.worker"], self.worker_env)
            env["PAWTRAIT_WORKERS"] = "0"
        self.process = await self._spawn(["-m", "cli.main", "bot"], env)
        await fake.wait_until(
            lambda: self._alive() and fake.identifies > identified and fake.connected, timeout, "the bot to connect to the fake Discord\n" + self.log_tail(),
        )

    async def _spawn(self, args: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
        with open(self.log_path, "ab") as log:
            return await asyncio.create_subprocess_exec(
                sys.executable, *args, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True,
            )

    def _alive(self) -> bool:
        if self.process is not None and self.process.returncode is not None:
            raise AssertionError(f"the bot exited with {self.process.returncode}:\n{self.log_tail()}")
        return True

    async def stop(self, timeout: float = 60) -> None:
        """SIGTERM, as an operator's Ctrl-C or a service manager would; the bot stops its own workers.
        A worker of its own host (distributed) is stopped first: while the bot closes (a second or more),
        such a worker would go on training, and a story that restarts mid-training would find it done."""
        for what, process in (("worker", self.worker), ("bot", self.process)):
            if process is None or process.returncode is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
                raise AssertionError(f"the {what} did not stop within a minute of SIGTERM:\n" + self.log_tail()) from None
        self.worker = None

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


async def fake_and_installation(request: pytest.FixtureRequest) -> tuple[FakeDiscord, Path, Settings]:
    """What the bot of a module's `world` fixture runs against: a started fake Discord, a folder of
    its own and an installation there on the tiny model (64 px keeps the stories fast), distributed
    in a module's "distributed" run (fixture params=MODES)."""
    model = request.getfixturevalue("tiny_model_dir")
    folder = request.getfixturevalue("tmp_path_factory").mktemp("bot")
    fake = FakeDiscord()
    await fake.start()
    settings = Settings(data_dir=folder / "data", model=str(model), vae=None, device="cpu", resolution=64)
    if getattr(request, "param", "embedded") == "distributed":
        settings = distributed(settings, request)
    return fake, folder, settings


@dataclass
class Cast:
    """Who and where the bot stories play, the same in every story module that tells of two servers."""

    cats: Guild
    dogs: Guild
    alice: Member  # owns the Cat Club
    bob: Member
    mod: Member  # Manage Server + Manage Messages
    carol: Member  # owns the Dog Park, a stranger to the Cat Club
    general: Channel
    gallery: Channel

    @classmethod
    def on(cls, fake: FakeDiscord) -> Cast:
        cats = fake.add_guild("Cat Club", owner="alice")
        dogs = fake.add_guild("Dog Park", owner="carol")
        return cls(
            cats=cats, dogs=dogs, alice=cats.members[cats.owner_id], bob=fake.add_member(cats, "bob"),
            mod=fake.add_moderator(cats, "mod"), carol=dogs.members[dogs.owner_id],
            general=fake.channel(cats, "general"), gallery=fake.add_channel(cats, "gallery"),
        )


def bot_process(
    settings: Settings, fake: FakeDiscord, folder: Path, worker_env: dict[str, str] | None = None, **extra: str
) -> BotProcess:
    """`pawtrait bot` for `settings` against `fake`: one worker of one thread, commands synced
    globally (no development server), its log in `folder`; `extra` variables override these."""
    env = {**settings_env(settings), **fake.bot_env(), "PAWTRAIT_WORKERS": "1", "PAWTRAIT_TEST_THREADS": "1", **extra}
    env.pop("PAWTRAIT_DEV_GUILD", None)
    return BotProcess(env, folder / "bot.log", worker_env)


@asynccontextmanager
async def running(bot: BotProcess, fake: FakeDiscord) -> AsyncIterator[None]:
    """A module's bot connected to the fake Discord while its stories run; afterwards both stop
    and the bot's log is printed (pytest shows it when a story failed)."""
    await bot.start(fake)
    try:
        yield
    finally:
        await bot.stop()
        await fake.stop()
        print(bot.log_tail(200))


async def query(db: Database, sql: str, **params: Any) -> list[RowMapping]:
    """Read the bot's database the way an operator would (the test never writes to it)."""
    return await db.all(text(sql), params)


async def wait_for_rows(fake: FakeDiscord, db: Database, sql: str, timeout: float, what: str) -> list[RowMapping]:
    """Poll the database until `sql` returns rows."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = await query(db, sql)
        if found:
            return found
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.2)
