"""What a job kind's contract is made of: the kind itself (its place in the queue, who runs it,
how people are told about it) and JSON-safe dataclasses for its payload, result and events.

Storage keeps JSON; these types are how the bot, the CLI and the worker write and read it.
Plain dataclasses rather than pydantic: the project's data is dataclasses already
(GenerationRequest, TrainingParams), pydantic is no dependency of ours, and the checks a
stored value needs (its fields there, of the right JSON type) fit in `from_json` below.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Any, ClassVar, Generic, TypeVar, Union, get_args, get_origin, get_type_hints

from config.settings import Settings
from storage import jobs
from storage.db import Queries
from storage.job_kinds import QueueKind
from storage.job_records import Job, JobEvent

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")


class ContractError(ValueError):
    """A stored job's payload, result or event does not fit its kind (written by another
    version, or by hand); the message names the job and what is wrong."""


@dataclass(frozen=True)
class Event:
    """Something that happened to a job, as `job_events` stores it: `name` is the row's kind."""

    name: ClassVar[str]

    @classmethod
    def listener(cls, kind: str) -> str:
        """The bot listener that shows this event of a job of `kind` (bot.job_relay calls it)."""
        return f"on_pawtrait_{kind}_{cls.name}"


@dataclass(frozen=True)
class JobKind(QueueKind, Generic[P, R]):
    """One kind of job, declared once (engine.usecases.jobs.<kind>) and registered in
    engine.usecases.jobs.registry."""

    doing: str  # "ran out of GPU memory while painting"
    emoji: str
    out_of_memory_advice: str
    payload: type[P]
    result: type[R]
    events: tuple[type[Event], ...]  # what its worker and the queue record about it
    # "module:Class.function": the worker's runner, named rather than imported (it loads torch).
    runner: str
    summary: Callable[[P, int | None], str]  # (payload, run_id) -> one line for a listing

    async def submit(
        self,
        db: Queries,
        settings: Settings,
        guild_id: str,
        user_id: str,
        payload: P,
        run_id: int | None = None,
        also: jobs.WithJob | None = None,
    ) -> Job:
        """Queue a job of this kind (storage.jobs.submit_job: its cap, its 'queued' event, and
        `also`, written in the same transaction)."""
        return await jobs.submit_job(
            db, settings, self.name, guild_id, user_id, to_json(payload), run_id=run_id, also=also
        )

    def payload_of(self, job: Job) -> P:
        return from_json(self.payload, job.payload, f"job #{job.id}'s {self.noun} request")

    def result_of(self, job: Job) -> R | None:
        return None if job.result is None else from_json(self.result, job.result, f"job #{job.id}'s result")

    def event_of(self, event: JobEvent) -> Event:
        for known in self.events:
            if known.name == event.kind:
                return from_json(known, event.data, f"the {event.kind} event of job #{event.job_id}")
        raise ContractError(f"job #{event.job_id} is a {self.noun}, which has no {event.kind!r} events")

    def describe(self, job: Job) -> str:
        """One line for a listing (`/queue`): a job whose request cannot be read is still listed."""
        try:
            return f"{self.emoji} {self.summary(self.payload_of(job), job.run_id)}"
        except ContractError:
            return f"{self.emoji} {self.noun} (its request cannot be read)"


def to_json(value: Any) -> Any:
    """A contract value as JSON-safe data (dataclasses as objects, under their fields' JSON keys)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if is_dataclass(value):
        return {_key(field): to_json(getattr(value, field.name)) for field in fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    return value


def from_json(cls: type[T], data: Any, what: str) -> T:
    """Read a contract dataclass back; ContractError says what of `what` is missing or wrong.
    Keys this version does not know are ignored: a newer version may have written them."""
    if not isinstance(data, Mapping):
        raise ContractError(f"{what} is not an object")
    hints = get_type_hints(cls)
    values = {}
    for field in fields(cls):  # type: ignore[arg-type]
        key = _key(field)
        if key in data:
            values[field.name] = _value(hints[field.name], data[key], f"{what}: {key}")
        elif field.default is MISSING and field.default_factory is MISSING:
            raise ContractError(f"{what} lacks {key!r}")
    try:
        return cls(**values)
    except ValueError as error:  # a request that is no longer valid (GenerationError says why)
        raise ContractError(f"{what} is not valid: {error}") from None


def _key(field: Any) -> str:
    return field.metadata.get("json", field.name)


def _value(hint: Any, value: Any, what: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        [hint] = [arg for arg in get_args(hint) if arg is not type(None)]
        origin = get_origin(hint)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ContractError(f"{what} is not a list")
        item = get_args(hint)[0]
        return origin(_value(item, entry, what) for entry in value)
    if hasattr(hint, "from_dict"):
        if not isinstance(value, Mapping):
            raise ContractError(f"{what} is not an object")
        try:
            return hint.from_dict(value)
        except ValueError as error:
            raise ContractError(f"{what} is not valid: {error}") from None
    if is_dataclass(hint):
        return from_json(hint, value, what)
    expected = (int, float) if hint is float else hint
    if not isinstance(value, expected) or (hint in (int, float) and isinstance(value, bool)):
        raise ContractError(f"{what} should be {getattr(hint, '__name__', hint)}, not {value!r}")
    return value
