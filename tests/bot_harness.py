"""Running `pawtrait bot` as a real process against the fake Discord, for end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

from fake_discord import FakeDiscord

REPO = Path(__file__).resolve().parent.parent


class BotProcess:
    """`python -m cli.main bot` with its output in a log file (shown when a test fails)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, fake: FakeDiscord, timeout: float = 60, **extra_env: str) -> None:
        identified = fake.identifies
        env = dict(self.env, **extra_env)
        log = open(self.log_path, "ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli.main", "bot", cwd=REPO, env=env, stdout=log, stderr=log,
            start_new_session=True,
        )
        log.close()
        await fake.wait_until(
            lambda: self._alive() and fake.identifies > identified and fake.connected, timeout, "the bot to connect to the fake Discord\n" + self.log_tail(),
        )

    def _alive(self) -> bool:
        if self.process is not None and self.process.returncode is not None:
            raise AssertionError(f"the bot exited with {self.process.returncode}:\n{self.log_tail()}")
        return True

    async def stop(self, timeout: float = 60) -> None:
        """SIGTERM, as an operator's Ctrl-C or a service manager would; the bot stops its workers."""
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
            raise AssertionError("the bot did not stop within a minute of SIGTERM:\n" + self.log_tail())

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


async def query(db_path: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    """Read the bot's database the way an operator would (the test never writes to it).

    In a thread: the fake Discord shares the test's event loop and must keep answering."""
    return await asyncio.to_thread(_query, db_path, sql, args)


async def wait_for_rows(fake: FakeDiscord, db_path: Path, sql: str, timeout: float, what: str) -> list[sqlite3.Row]:
    """Poll the database until `sql` returns rows."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = await query(db_path, sql)
        if found:
            return found
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.2)


def _query(db_path: Path, sql: str, args: tuple) -> list[sqlite3.Row]:
    connection = sqlite3.connect(db_path, timeout=30)
    connection.row_factory = sqlite3.Row
    try:
        return connection.execute(sql, args).fetchall()
    finally:
        connection.close()
