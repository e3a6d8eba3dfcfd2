"""Opening the database (a SQLite file, or PostgreSQL shared by many hosts) and running queries.

One `Database` per process holds a pool of connections. A statement run on it directly
commits on its own (autocommit); `async with db.transaction() as tx:` groups statements
all or nothing, and code that takes a `Queries` works the same inside or outside one.

SQLite: every transaction starts with BEGIN IMMEDIATE, taking the file's write lock up
front, so two processes claiming the same job or counting the same member's jobs can never
interleave; single statements run without a transaction, so readers never wait on writers
(WAL mode). PostgreSQL: transactions are READ COMMITTED; the queue's own statements take
the row and advisory locks they need (see storage.jobs).

The schema is brought up to date by Alembic (storage/migrations) once per process, the
first time a database is opened, not once per connection.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection, CursorResult, RowMapping
from sqlalchemy.engine.url import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql import Executable

from config.database_url import DatabaseUrl
from config.redaction import scrub
from storage.dialects import LockKey

log = logging.getLogger(__name__)
T = TypeVar("T")
# Alembic narrates every step at INFO; one line of ours says what changed (see upgrade).
logging.getLogger("alembic").setLevel(logging.WARNING)

# How long a statement keeps retrying while the database is unreachable (a PostgreSQL
# restart or failover takes seconds; a worker should ride it out, not fail its training).
RECONNECT_WITHIN_S = 90.0
IDLE_IN_TRANSACTION_MS = 5000
_MIGRATED: set[str] = set()


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached; the message says which (without the password) and what to do."""


class Queries(Protocol):
    """What storage functions need: a `Database` (autocommit) or a `Transaction`."""

    dialect: str
    # True for a handle that opens its own transactions (a Database): a function run on it
    # can be run again after a lost connection (see retry_on_disconnect).
    top_level: bool

    async def execute(self, statement: Executable, params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None) -> CursorResult: ...

    async def all(self, statement: Executable, params: Mapping[str, Any] | None = None) -> list[RowMapping]: ...

    async def one(self, statement: Executable, params: Mapping[str, Any] | None = None) -> RowMapping | None: ...

    async def scalar(self, statement: Executable, params: Mapping[str, Any] | None = None) -> Any: ...

    def transaction(self) -> Any: ...

    def savepoint(self) -> Any: ...


class _Reads:
    """all / one / scalar on top of `execute`."""

    async def execute(self, statement: Executable, params: Any = None) -> CursorResult:
        raise NotImplementedError

    async def all(self, statement: Executable, params: Mapping[str, Any] | None = None) -> list[RowMapping]:
        return list((await self.execute(statement, params)).mappings().all())

    async def one(self, statement: Executable, params: Mapping[str, Any] | None = None) -> RowMapping | None:
        return (await self.execute(statement, params)).mappings().first()

    async def scalar(self, statement: Executable, params: Mapping[str, Any] | None = None) -> Any:
        return (await self.execute(statement, params)).scalar()


class Transaction(_Reads):
    """Statements on one connection inside one transaction (committed when the block ends)."""

    top_level = False

    def __init__(self, connection: AsyncConnection, dialect: str) -> None:
        self.connection = connection
        self.dialect = dialect

    async def execute(self, statement: Executable, params: Any = None) -> CursorResult:
        return await self.connection.execute(statement, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """Joins the transaction already open: the outer block commits or rolls back everything."""
        yield self

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[Transaction]:
        """A part that may fail on its own (e.g. a unique clash to retry) without failing the
        whole transaction: PostgreSQL aborts a transaction at its first error otherwise."""
        async with self.connection.begin_nested():
            yield self

    async def lock(self, key: str) -> None:
        """Hold `key` until this transaction ends (see storage.dialects.LockKey)."""
        await self.execute(LockKey(key))


class Database(_Reads):
    """A pool of connections to one database, for one process."""

    top_level = True

    def __init__(self, engine: AsyncEngine, location: DatabaseUrl) -> None:
        self.engine = engine
        self.location = location
        self.dialect = engine.dialect.name
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @property
    def url(self) -> URL:
        return self.engine.url

    def describe(self) -> str:
        """The database, for logs and `pawtrait doctor`: never the password."""
        return self.location.describe()

    async def execute(self, statement: Executable, params: Any = None) -> CursorResult:
        """Run one statement in its own implicit transaction, retrying while the database is unreachable."""
        deadline = time.monotonic() + RECONNECT_WITHIN_S
        while True:
            try:
                async with self._autocommit.connect() as connection:
                    return await connection.execute(statement, params)
            except Exception as error:  # noqa: BLE001 - anything but a lost connection is re-raised
                await _wait_or_raise(error, deadline, self.describe())

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """BEGIN ... COMMIT on one pooled connection, rolled back if the block raises.

        Waits (up to RECONNECT_WITHIN_S) for an unreachable database before the block starts;
        a connection lost inside the block fails the block, which the caller may retry.
        """
        deadline = time.monotonic() + RECONNECT_WITHIN_S
        while True:
            try:
                context = self.engine.begin()
                connection = await context.__aenter__()
                break
            except Exception as error:  # noqa: BLE001 - anything but a lost connection is re-raised
                await _wait_or_raise(error, deadline, self.describe())
        try:
            yield Transaction(connection, self.dialect)
        except BaseException as error:
            await context.__aexit__(type(error), error, error.__traceback__)
            raise
        await context.__aexit__(None, None, None)

    def savepoint(self) -> Any:
        """Outside a transaction a failing statement fails alone: a plain transaction will do."""
        return self.transaction()

    async def close(self) -> None:
        await self.engine.dispose()


def retry_on_disconnect(function: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Run `function(db, ...)`, one whole transaction, again when the connection dropped under it.

    The dropped attempt was rolled back, so running it again is safe; this is what lets a
    worker ride out a PostgreSQL restart in the middle of a training without losing a
    checkpoint row or an event. Only on a top-level handle: inside a caller's transaction
    the caller must start over, so the error goes up to it.
    """

    @functools.wraps(function)
    async def run(db: Queries, *args: Any, **kwargs: Any) -> T:
        deadline = time.monotonic() + RECONNECT_WITHIN_S
        while True:
            try:
                return await function(db, *args, **kwargs)
            except Exception as error:  # anything but a lost connection is re-raised
                if not db.top_level:
                    raise
                await _wait_or_raise(error, deadline, "")

    return run


def is_disconnect(error: BaseException) -> bool:
    """Whether `error` means the database went away (restart, network), not a bad statement."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, (OSError, ConnectionError)):
            return True
        # asyncpg: admin/crash shutdown, cannot connect now, connection exceptions (class 08).
        state = getattr(cause, "sqlstate", None)
        if isinstance(state, str) and (state.startswith("08") or state in ("57P01", "57P02", "57P03")):
            return True
        cause = cause.__cause__ or getattr(cause, "orig", None)
    return False


async def _wait_or_raise(error: Exception, deadline: float, where: str) -> None:
    if not is_disconnect(error):
        raise error
    if time.monotonic() > deadline:
        raise DatabaseUnavailable(
            f"cannot reach the database {where} ({scrub(str(getattr(error, 'orig', None) or error))}); check that it is running and that "
            "PAWTRAIT_DATABASE_URL is right"
        ) from error
    log.warning("database %s unreachable (%s); retrying", where or "", type(getattr(error, "orig", None) or error).__name__)
    await asyncio.sleep(1.0)


# --- opening ------------------------------------------------------------------------------


def create_engine(location: DatabaseUrl) -> AsyncEngine:
    target = location.driver_url
    if location.backend == "sqlite":
        if target.database:
            Path(target.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(target, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    # pre-ping: a pooled connection that died with a PostgreSQL restart is replaced before use.
    return create_async_engine(target, pool_pre_ping=True, pool_size=5, max_overflow=10, connect_args={
        "server_settings": {
            "application_name": "pawtrait",
            # Pawtrait's transactions take milliseconds. One left open by a process that froze
            # (SIGSTOP, a suspended VM) would hold its row locks, and the committed-events horizon,
            # until it woke up; the server ends such a session instead, and the process, once
            # awake, finds its connection gone and its job taken over.
            "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS),
        },
    })


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver must not open transactions on its own: we send BEGIN ourselves (below).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # The busy timeout first: every later statement then waits for another process's lock.
    for pragma in ("busy_timeout = 30000", "foreign_keys = ON", "synchronous = NORMAL"):
        cursor.execute(f"PRAGMA {pragma}")
    _switch_to_wal(cursor)
    cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """WAL mode (readers never wait for writers), once per database file.

    Switching a new file to WAL while another process writes to it fails at once with
    "database is locked" instead of waiting out the busy timeout, so that one retries.
    """
    deadline = time.monotonic() + 30.0
    while True:
        cursor.execute("PRAGMA journal_mode")
        if str(cursor.fetchone()[0]).lower() == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except Exception as error:  # the driver's OperationalError
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_begin(connection: Connection) -> None:
    if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
        connection.exec_driver_sql("BEGIN IMMEDIATE")


async def open_database(url: DatabaseUrl | str, *, migrate: bool = True) -> Database:
    """Open the database at `url`, bringing its schema up to date the first time in this process.

    The installation's own database is opened with its storage (storage.connect.open_storage);
    this is for the others: a migration's target, a script given a URL.
    """
    location = DatabaseUrl.parse(url) if isinstance(url, str) else url
    database = Database(create_engine(location), location)
    if migrate and location.text not in _MIGRATED:
        await upgrade(database)
        _MIGRATED.add(location.text)
    return database


async def upgrade(database: Database, revision: str = "head") -> None:
    """Apply the migrations the database lacks, holding a lock so two processes never both do."""
    before = await current_revision(database)
    if database.dialect == "sqlite":
        await _upgrade_sqlite(database, revision)
    else:
        async with database.transaction() as tx:
            await tx.lock("pawtrait-migrations")
            await tx.connection.run_sync(_alembic_upgrade, revision)
    after = await current_revision(database)
    if after != before:
        log.info("database %s: schema upgraded from %s to %s", database.describe(), before or "nothing", after)


async def _upgrade_sqlite(database: Database, revision: str) -> None:
    """SQLite changes a table by copying it and dropping the old one, which with foreign keys on
    deletes the rows that refer to it (cascades); the pragma is a no-op inside a transaction, so
    it is off on this connection around the migrations' transaction (BEGIN IMMEDIATE: one
    process at a time), which checks the keys itself (see 0004)."""
    async with database.engine.connect() as connection:
        await connection.run_sync(_sqlite_pragma, "foreign_keys = OFF")
        try:
            async with connection.begin():
                await connection.run_sync(_alembic_upgrade, revision)
        finally:
            await connection.run_sync(_sqlite_pragma, "foreign_keys = ON")


def _sqlite_pragma(connection: Connection, pragma: str) -> None:
    """Run a pragma on the driver's connection, outside any transaction."""
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()


def _alembic_upgrade(connection: Connection, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("storage").joinpath("migrations")))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def current_revision(database: Database) -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    async with database.engine.connect() as connection:
        return await connection.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
