"""A database handle for one job's worker: every write it makes checks the job's lease first.

The engines (training, generation) write runs, checkpoints, validation images and
generations through whatever `Queries` they are given. The worker gives them a
`FencedDatabase`: each write, or each transaction, starts by checking that the job's
attempt is still this worker's (locking the job row on PostgreSQL until the write commits),
so a worker that froze, lost its job to another host and woke up again changes nothing:
its writes raise `LeaseLost` instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.engine import CursorResult
from sqlalchemy.sql import Executable, Select

from storage.db import Database, Transaction, _Reads, retry_on_disconnect
from storage.jobs import JobLease, check_lease


class FencedDatabase(_Reads):
    top_level = True

    def __init__(self, db: Database, lease: JobLease) -> None:
        self.db = db
        self.lease = lease
        self.dialect = db.dialect

    async def execute(self, statement: Executable, params: Any = None) -> CursorResult:
        if isinstance(statement, Select):
            return await self.db.execute(statement, params)  # reads need no fence
        return await self._fenced_write(statement, params)

    @retry_on_disconnect
    async def _fenced_write(self, statement: Executable, params: Any) -> CursorResult:
        async with self.transaction() as tx:
            return await tx.execute(statement, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self.db.transaction() as tx:
            await check_lease(tx, self.lease)
            yield tx
