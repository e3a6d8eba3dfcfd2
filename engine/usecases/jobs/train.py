"""The `train` job: run (or resume) one training run of a pet (the bot's `/train`, `pawtrait train --detach`)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.usecases.jobs.contract import Event, JobKind
from engine.usecases.jobs.events import LIFECYCLE
from storage.job_records import Job


@dataclass(frozen=True)
class TrainPayload:
    pet_id: int
    run_id: int | None = None  # jobs of release 0.1 keep their run on the job row only


@dataclass(frozen=True)
class TrainResult:
    run_id: int
    status: str | None = None  # the run's: succeeded, failed or cancelled (absent in release 0.1)
    step: int | None = None  # the step it ended at


@dataclass(frozen=True)
class Checkpoint(Event):
    name = "checkpoint"
    step: int = 0
    checkpoint_id: int | None = None


@dataclass(frozen=True)
class ValidationShown:
    """One stored validation picture, with its scores and the safety check's verdict."""

    id: int
    path: str  # file-store key
    prompt: str = ""
    seed: int | None = None
    dino: float | None = None
    clip_i: float | None = None
    clip_t: float | None = None
    flagged: bool | None = None  # None: not screened


@dataclass(frozen=True)
class Validation(Event):
    """A round of validation pictures at one step (0 = before training)."""

    name = "validation"
    step: int = 0
    images: tuple[ValidationShown, ...] = ()


def out_of_memory_advice(mode: str | None = None) -> str:
    """What to do after a training ran out of GPU memory; `mode` is the plan's, if it got that far."""
    if mode == "lean":
        return ("the GPU has too little memory free beside the model even in lean mode: train at a lower "
                "resolution (PAWTRAIT_RESOLUTION, or --resolution) or on a bigger GPU")
    return "try lean mode (PAWTRAIT_TRAIN_MODE=lean, or --mode lean), which needs far less memory"


def _summary(_payload: TrainPayload, run_id: int | None) -> str:
    return f"training (run #{run_id})" if run_id is not None else "training"


TRAIN: JobKind[TrainPayload, TrainResult] = JobKind(
    name="train",
    priority=1,
    noun="training",
    typical_s=600.0,
    served_between_steps=False,
    limit=lambda settings: settings.max_queued_trainings_per_user,
    doing="training",
    emoji="🏋️",
    out_of_memory_advice=out_of_memory_advice(),
    payload=TrainPayload,
    result=TrainResult,
    events=(*LIFECYCLE, Checkpoint, Validation),
    runner="engine.gpu.worker.executor:Executor.run_training",
    summary=_summary,
)


def run_id_of(job: Job) -> int | None:
    """The job's training run: on the job row once it is queued, else in its payload (ContractError if unreadable)."""
    return job.run_id if job.run_id is not None else TRAIN.payload_of(job).run_id
