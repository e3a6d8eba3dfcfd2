"""Waking a worker when a job is queued or a running one is cancelled: PostgreSQL's LISTEN/NOTIFY,
or a short poll on SQLite.

A notification reaches only listeners connected when it is sent (one sent while the
listening connection was down is gone), so `wait` also returns after `timeout` and the
worker looks at the queue anyway: the catch-up poll. On SQLite (one host) there is no
notification; an unlocked "anything queued?" read every POLL_S is cheap in WAL mode.

An idle worker `wait`s for a job to claim; a busy one listens for `news` (a job queued, a
cancel) to refresh what its training asks between steps (engine.gpu.worker.step_state).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from storage.db import Database, is_disconnect
from storage.jobs import WAKE_CHANNEL, has_queued

log = logging.getLogger(__name__)

# SQLite: how often an idle worker looks for work (p50 pickup ~ half of it).
POLL_S = 0.05


class Wakeup:
    """`await wait(timeout)` returns when a job may be waiting, or after `timeout` seconds."""

    async def wait(self, timeout: float) -> None:
        raise NotImplementedError

    def clear(self) -> None:
        """Forget earlier wake-ups (call before looking at the queue)."""

    async def news(self, timeout: float) -> None:
        """Return at the next notification (forgetting it: the caller looks at the database next),
        or after `timeout`; without notifications (SQLite), after POLL_S: the caller's look is the poll."""
        await asyncio.sleep(min(timeout, POLL_S))

    async def close(self) -> None:
        pass


class PollWakeup(Wakeup):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await has_queued(self.db):
                return
            await asyncio.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


class ListenWakeup(Wakeup):
    """A dedicated connection LISTENing on the queue's channel, reopened after it drops."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._event = asyncio.Event()
        self._connection: AsyncConnection | None = None
        self._driver: Any = None

    async def _listen(self) -> None:
        if self._driver is not None and not self._driver.is_closed():
            return
        await self._drop()
        connection = await self.db.engine.connect()
        try:
            raw = await connection.get_raw_connection()
            driver = raw.driver_connection
            await driver.add_listener(WAKE_CHANNEL, self._notified)
        except BaseException:
            await connection.close()
            raise
        self._connection, self._driver = connection, driver
        # Anything queued while we were not listening is found by the caller's next look.
        self._event.set()

    def _notified(self, *_args: Any) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    async def wait(self, timeout: float) -> None:
        try:
            await self._listen()
        except Exception as error:  # a database that is down: poll until it is back
            if not is_disconnect(error):
                raise
            log.warning("cannot LISTEN for new jobs (%s); polling until the database is back", type(error).__name__)
            await asyncio.sleep(min(timeout, 1.0))
            return
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass

    async def news(self, timeout: float) -> None:
        await self.wait(timeout)
        self.clear()

    async def _drop(self) -> None:
        connection, self._connection, self._driver = self._connection, None, None
        if connection is not None:
            try:
                await connection.invalidate()
                await connection.close()
            except Exception:  # noqa: BLE001 - it is already gone
                pass

    async def close(self) -> None:
        await self._drop()


def open_wakeup(db: Database) -> Wakeup:
    return ListenWakeup(db) if db.dialect == "postgresql" else PollWakeup(db)
