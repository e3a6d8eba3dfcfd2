"""Which checkpoint of a pet to take away: a step the member names, or the one the pet paints with."""

from __future__ import annotations

from dataclasses import dataclass

from engine.usecases.training.params import TrainingParams
from storage import runs
from storage.db import Queries
from storage.generations import default_checkpoint
from storage.pets import Pet


class ExportError(ValueError):
    """The pet has nothing to take away (yet, or at that step); the message says so in plain words."""


@dataclass(frozen=True)
class Chosen:
    pet: Pet
    run: runs.Run
    checkpoint: runs.Checkpoint

    @property
    def params(self) -> TrainingParams:
        return TrainingParams.from_dict(self.run.params)


async def find_checkpoint(db: Queries, pet: Pet, step: int | None = None) -> Chosen:
    """`step` of the pet's newest run that saved one (as /pick finds steps); without a step the
    pet's active checkpoint, else its newest succeeded run's chosen or last one."""
    if step is None:
        ref = await default_checkpoint(db, pet.id, pet.active_checkpoint_id)
        if ref is None:
            raise _untrained(pet)
        run = await runs.get_run(db, ref.run_id)
        assert run is not None  # the checkpoint row references it
        checkpoints = await runs.list_checkpoints(db, run.id)
        return Chosen(pet, run, next(checkpoint for checkpoint in checkpoints if checkpoint.id == ref.id))
    saved: set[int] = set()
    for run in await runs.list_runs(db, pet.id):  # newest first
        checkpoints = await runs.list_checkpoints(db, run.id)
        for checkpoint in checkpoints:
            if checkpoint.step == step:
                return Chosen(pet, run, checkpoint)
        saved.update(checkpoint.step for checkpoint in checkpoints)
    if not saved:
        raise _untrained(pet)
    have = ", ".join(map(str, sorted(saved)))
    raise ExportError(f"{pet.name} has no checkpoint at step {step}. Saved steps: {have}.")


def _untrained(pet: Pet) -> ExportError:
    return ExportError(f"{pet.name} has no trained checkpoint yet. Train {pet.name} first, then take its LoRA.")

