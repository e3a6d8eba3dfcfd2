"""The few SQL pieces that differ between SQLite and PostgreSQL, each compiled per dialect.

Queries everywhere else in `storage/` are one body of SQLAlchemy Core for both databases;
they use these constructs where the two disagree: the clock, durations, the horizon of
committed events, per-key locks and waking idle workers. Each construct renders the
PostgreSQL form by default and the SQLite form through `@compiles(..., "sqlite")`.

Times are ISO-8601 UTC text in SQLite (what the first release wrote, kept so its
databases upgrade in place) and `timestamptz` in PostgreSQL; `Timestamp` reads both as
the same text, so callers never see the difference.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import String, Table, types
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.expression import ClauseElement, Executable, FunctionElement

ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
SQLITE_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


def iso(value: datetime) -> str:
    """'2026-12-02T10:11:12.345Z': milliseconds, as SQLite's strftime('%f') writes them."""
    return value.astimezone(UTC).strftime(ISO_FORMAT)[:-4] + "Z"


def _compile_to(construct: type[ClauseElement], text: str, dialect: str | None = None) -> None:
    """Compile `construct` to fixed `text`: on `dialect` only when given, else by default."""
    compiles(construct, *([dialect] if dialect else []))(lambda element, compiler, **kw: text)


class Timestamp(types.TypeDecorator):
    """A UTC time, as ISO text on both databases' Python side."""

    impl = String
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> types.TypeEngine:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(TIMESTAMP(timezone=True))
        return dialect.type_descriptor(String())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name != "postgresql":
            return value
        if isinstance(value, datetime):
            return value
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if isinstance(value, datetime):
            return iso(value)
        return value


class utc_now(FunctionElement):
    """The database's clock: leases and ages are judged on it, never on a host's clock."""

    type = Timestamp()
    inherit_cache = True


_compile_to(utc_now, "now()")
_compile_to(utc_now, SQLITE_NOW, "sqlite")


class utc_now_minus(FunctionElement):
    """The database's clock minus `seconds` (a bound number), for 'older than' comparisons."""

    type = Timestamp()
    inherit_cache = True


@compiles(utc_now_minus)
def _minus_pg(element: utc_now_minus, compiler: Any, **kw: Any) -> str:
    (seconds,) = element.clauses
    return f"(now() - make_interval(secs => {compiler.process(seconds, **kw)}))"


@compiles(utc_now_minus, "sqlite")
def _minus_sqlite(element: utc_now_minus, compiler: Any, **kw: Any) -> str:
    (seconds,) = element.clauses
    return f"strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('%+f seconds', -({compiler.process(seconds, **kw)})))"


def utc_now_plus(seconds: float) -> utc_now_minus:
    """The database's clock plus `seconds` (an expiry time)."""
    return utc_now_minus(-float(seconds))


def insert_for(dialect: str, table: Table) -> Insert:
    """An INSERT that can say ON CONFLICT: both databases spell it the same, but SQLAlchemy
    has one class per dialect for it, so this is the one place that picks."""
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def upsert(dialect: str, table: Table, key: Sequence[str], values: Mapping[str, Any], *, keep: Collection[str] = ()) -> Insert:
    """INSERT `values`, or where a row with the same `key` columns exists, set its other given
    columns (but those in `keep`, e.g. a creation time) to them: one row per key, the latest values."""
    statement = insert_for(dialect, table).values(**values)
    return statement.on_conflict_do_update(
        index_elements=[table.c[name] for name in key],
        set_={name: statement.excluded[name] for name in values if name not in key and name not in keep},
    )


class seconds_between(FunctionElement):
    """seconds_between(start, end): `end - start` in seconds, as a float."""

    type = types.Float()
    inherit_cache = True


@compiles(seconds_between)
def _between_pg(element: seconds_between, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"extract(epoch from ({end} - {start}))"


@compiles(seconds_between, "sqlite")
def _between_sqlite(element: seconds_between, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


class event_horizon(FunctionElement):
    """Transactions below this id have all ended, so their events are all visible now.

    PostgreSQL hands out sequence ids when a row is inserted but makes the row visible at
    commit, so two writers can commit ids out of order and a reader doing `id > last`
    skips the later-committed, smaller id for good. Events carry their transaction id
    (`job_events.tx`); a reader takes only events of transactions older than the oldest
    one still running and walks them in (tx, id) order. SQLite has one writer at a time,
    so ids are already in commit order: every event is below its horizon (tx stays 0).
    """

    type = types.BigInteger()
    inherit_cache = True


_compile_to(event_horizon, "pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
_compile_to(event_horizon, "9223372036854775807", "sqlite")


class current_tx(FunctionElement):
    """The writing transaction's id (PostgreSQL); 0 in SQLite (see `event_horizon`)."""

    type = types.BigInteger()
    inherit_cache = True


_compile_to(current_tx, "pg_current_xact_id()::text::bigint")
_compile_to(current_tx, "0", "sqlite")


class LockKey(Executable, ClauseElement):
    """Serialise transactions that use the same key until they end.

    PostgreSQL: a transaction-scoped advisory lock (e.g. two bot processes submitting for
    one member at once both count that member's waiting jobs; the second waits for the
    first to commit, so the limit holds). SQLite: every write transaction already holds
    the database's write lock from its first statement (BEGIN IMMEDIATE), so nothing to do.
    """

    inherit_cache = False

    def __init__(self, key: str) -> None:
        self.key = key


@compiles(LockKey)
def _lock_pg(element: LockKey, compiler: Any, **kw: Any) -> str:
    key = compiler.process(_literal(element.key), **kw)
    return f"SELECT pg_advisory_xact_lock(hashtextextended({key}, 0))"


_compile_to(LockKey, "SELECT 1", "sqlite")  # nothing to do there


class Notify(Executable, ClauseElement):
    """Wake the workers listening on `channel` when the transaction commits (PostgreSQL
    NOTIFY); SQLite workers poll instead, so nothing to send there."""

    inherit_cache = False

    def __init__(self, channel: str) -> None:
        self.channel = channel


@compiles(Notify)
def _notify_pg(element: Notify, compiler: Any, **kw: Any) -> str:
    return f"SELECT pg_notify({compiler.process(_literal(element.channel), **kw)}, '')"


_compile_to(Notify, "SELECT 1", "sqlite")  # nothing to do there


class ResetSequence(Executable, ClauseElement):
    """After rows were copied in with their ids (pawtrait migrate-to), make the table's next id
    follow the largest one: PostgreSQL's serial sequence does not see explicit ids; SQLite's
    rowid always takes max(id) + 1, so nothing to do there."""

    inherit_cache = False

    def __init__(self, table: Table) -> None:
        self.table = table


@compiles(ResetSequence)
def _reset_pg(element: ResetSequence, compiler: Any, **kw: Any) -> str:
    name = element.table.name
    return f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), coalesce(max(id), 0) + 1, false) FROM {name}"


_compile_to(ResetSequence, "SELECT 1", "sqlite")  # nothing to do there


def _literal(value: str) -> ColumnElement[str]:
    from sqlalchemy import literal

    return literal(value, String())
