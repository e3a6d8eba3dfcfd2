"""Checkpoint folders: the LoRA in both formats plus, for the newest one, the state to resume from.

A checkpoint is written into a fresh local folder, then published to the file store under
a key of its own (storage.keys.checkpoint), and only then gets its row: a crash while
saving never leaves a row (or a resume) pointing at half a checkpoint. Only the newest
checkpoint keeps `training_state.pt` (optimizer moments, scheduler, step): older ones are
for choosing and downloading, not for resuming, and do not need it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.gpu.training.lora_export import DIFFUSERS_FILE, save_diffusers, save_kohya
from storage import runs
from storage.db import Queries
from storage.files import FileStore

STATE_FILE = "training_state.pt"


@dataclass(frozen=True)
class CheckpointFiles:
    folder: Path
    diffusers_file: Path
    kohya_file: Path


def write_checkpoint(
    folder: Path,
    lora: dict[str, torch.Tensor],
    lora_config: dict,
    *,
    rank: int,
    alpha: float,
    kohya_name: str,
    state: dict | None,
) -> CheckpointFiles:
    """Write everything into the new, empty local folder `folder` (the file store publishes it)."""
    folder.mkdir(parents=True)
    save_diffusers(folder, lora, lora_config)
    save_kohya(folder / f"{kohya_name}.safetensors", lora, rank, alpha, kohya_name)
    if state is not None:
        torch.save(state, folder / STATE_FILE)
    return CheckpointFiles(folder, folder / DIFFUSERS_FILE, folder / f"{kohya_name}.safetensors")


def state_key(checkpoint_key: str) -> str:
    return f"{checkpoint_key}/{STATE_FILE}"


def read_training_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


async def prune_checkpoints(db: Queries, store: FileStore, run_id: int, keep: int) -> list[int]:
    """Delete all but the newest `keep` checkpoints of a run (rows first, then files and their validation images).

    A checkpoint a pet uses or the run chose is never deleted. Returns the deleted steps.
    """
    checkpoints = await runs.list_checkpoints(db, run_id)
    deleted = []
    for checkpoint in checkpoints[: max(0, len(checkpoints) - keep)]:
        if await runs.checkpoint_in_use(db, checkpoint.id):
            continue
        images = await runs.delete_checkpoint(db, checkpoint.id)
        await store.delete([image.path for image in images])
        await store.delete_prefix(checkpoint.path)
        deleted.append(checkpoint.step)
    return deleted
