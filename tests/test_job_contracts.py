"""Each job kind's contract: what the bot and the CLI queue reaches the worker as it was written,
a job this version cannot read is refused in plain words, and every kind has its runner and
its listeners."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bot.cogs.imagine import Imagine
from bot.cogs.train import Train
from engine.usecases.generation.request import GenerationRequest
from engine.usecases.jobs.contract import ContractError, to_json
from engine.usecases.jobs.events import Cancelled, Progress, Queued
from engine.usecases.jobs.generate import GENERATE, GeneratePayload, GenerateResult
from engine.usecases.jobs.registry import KINDS, job_kind, listeners, runner_of
from engine.usecases.jobs.train import TRAIN, TrainPayload, TrainResult, Validation, ValidationShown
from storage.job_records import EVENT_KINDS, Job, JobEvent


def stored(kind: str, payload: object, result: object = None) -> Job:
    """A job as storage reads it back: its payload and result through JSON text."""
    return Job(
        id=7, kind=kind, status="succeeded", guild_id="g", user_id="u", payload=json.loads(json.dumps(payload)),
        result=None if result is None else json.loads(json.dumps(result)), progress=1.0, progress_text=None,
        run_id=None, generation_id=None, attempts=1, worker_id="w", heartbeat_at=None, cancel_requested=False,
        error=None, created_at="", started_at=None, finished_at=None,
    )


def test_payloads_results_and_events_round_trip_through_json() -> None:
    request = GenerationRequest(prompt="a photo of TOK cat", pet_id=3, seed=5, size="16:9", count=2)
    painting = stored("generate", to_json(GeneratePayload(request)),
                      to_json(GenerateResult(9, ("a.png", "b.png"), (5, 6), ("slow",), (False, True))))
    assert GENERATE.payload_of(painting) == GeneratePayload(request)
    assert GENERATE.result_of(painting) == GenerateResult(9, ("a.png", "b.png"), (5, 6), ("slow",), (False, True))
    training = stored("train", to_json(TrainPayload(pet_id=2, run_id=4)), to_json(TrainResult(4, "succeeded", 40)))
    assert TRAIN.payload_of(training) == TrainPayload(2, 4) and TRAIN.result_of(training) == TrainResult(4, "succeeded", 40)

    round_ = Validation(10, (ValidationShown(1, "v/1.png", "TOK cat", 42, 0.7, None, 0.3, False),))
    for kind, event in [(TRAIN, round_), (TRAIN, Progress(3, 10, 0.1234, 61.5)), (GENERATE, Queued(2, "why")),
                        (GENERATE, Cancelled("running", "the worker died"))]:
        row = JobEvent(1, 7, event.name, json.loads(json.dumps(to_json(event))), "")
        assert kind.event_of(row) == event
    assert to_json(Cancelled("queued")) == {"while": "queued", "reason": None}  # the key the queue writes


def test_jobs_of_release_0_1_still_read() -> None:
    old = stored("generate", {"request": {"prompt": "Thor asleep"}}, {"generation_id": 1, "files": ["g/1.png"]})
    assert GENERATE.result_of(old) == GenerateResult(1, ("g/1.png",))
    assert GENERATE.describe(old) == "🎨 `Thor asleep`"
    broken = stored("generate", {"request": {"prompt": "Thor\n✅ Approved `by` mods"}})
    assert GENERATE.describe(broken) == "🎨 `Thor ✅ Approved ˋbyˋ mods`"  # one line in /queue and /cancel
    assert TRAIN.payload_of(stored("train", {"pet_id": 1})) == TrainPayload(1)


@pytest.mark.parametrize(
    ("kind", "payload", "message"),
    [
        ("train", {"run_id": 4}, "job #7's training request lacks 'pet_id'"),
        ("train", {"pet_id": "Thor"}, "job #7's training request: pet_id should be int, not 'Thor'"),
        ("generate", {"request": "a cat"}, "job #7's generation request: request is not an object"),
        ("generate", {"request": {"prompt": "a cat", "count": 9}}, "is not valid: Count must be 1 to 4 (got 9)"),
        ("generate", [], "job #7's generation request is not an object"),
    ],
)
def test_a_stored_job_that_does_not_fit_its_kind_is_refused_in_plain_words(kind, payload, message) -> None:
    with pytest.raises(ContractError, match=message.replace("(", r"\(").replace(")", r"\)")):
        job_kind(kind).payload_of(stored(kind, payload))
    assert job_kind(kind).describe(stored(kind, payload)).endswith("(its request cannot be read)")


def test_an_unknown_kind_or_event_is_named() -> None:
    with pytest.raises(ValueError, match="unknown job kind 'upscale'; expected one of generate, train"):
        job_kind("upscale")
    with pytest.raises(ContractError, match="job #7 is a generation, which has no 'validation' events"):
        GENERATE.event_of(JobEvent(1, 7, "validation", {}, ""))
    with pytest.raises(ContractError, match="the progress event of job #7: step should be int"):
        TRAIN.event_of(JobEvent(1, 7, "progress", {"step": "ten"}, ""))


def test_every_kind_has_a_runner_and_every_event_a_stored_kind() -> None:
    for kind in KINDS.values():
        assert callable(runner_of(kind))
        assert {event.name for event in kind.events} <= set(EVENT_KINDS)
    missing = dataclasses.replace(GENERATE, runner="engine.gpu.worker.executor:Executor.paint_nothing")
    with pytest.raises(RuntimeError, match="no runner for job kind 'generate'"):
        runner_of(missing)


def test_the_cogs_listen_only_to_events_the_relay_sends() -> None:
    declared = {name for cog in (Imagine, Train) for name, _ in cog.__cog_listeners__ if name.startswith("on_pawtrait_")}
    assert declared and declared <= listeners()
