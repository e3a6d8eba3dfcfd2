"""Which of a pet's checkpoints a picture is painted with, decided in one place for the front
ends (when a request is queued) and the worker (when it is painted). Torch-free: the bot imports it."""

from __future__ import annotations

from engine.usecases.generation.request import checkpoint_gone, untrained
from storage.db import Queries
from storage.generations import CheckpointRef, default_checkpoint, pet_checkpoint
from storage.pets import Pet


async def checkpoint_to_paint(db: Queries, pet: Pet, checkpoint_id: int | None) -> CheckpointRef:
    """`checkpoint_id` if given (it must be one of the pet's), else the pet's current checkpoint.

    Raises GenerationError in plain words: the pet has no finished training, or the checkpoint
    asked for is not the pet's (any more).
    """
    if checkpoint_id is not None:
        checkpoint = await pet_checkpoint(db, pet.id, checkpoint_id)
        if checkpoint is None:
            raise checkpoint_gone(pet.name, checkpoint_id)
        return checkpoint
    checkpoint = await default_checkpoint(db, pet.id, pet.active_checkpoint_id)
    if checkpoint is None:
        raise untrained(pet.name)
    return checkpoint
