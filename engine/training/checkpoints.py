"""Checkpoint folders: the LoRA in both formats plus, for the newest one, the state to resume from.

A folder is written under a temporary name and renamed into place, so a crash while
saving never leaves a half checkpoint that a row (or a resume) could point at. Only the
newest checkpoint keeps `training_state.pt` (optimizer moments, scheduler, step): older
ones are for choosing and downloading, not for resuming, and do not need it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
import torch

from engine.training.lora_export import DIFFUSERS_FILE, save_diffusers, save_kohya
from storage import runs
from storage.files import DataDir, remove_tree

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
    """Write everything into `folder` (replacing an older copy of the same step) atomically."""
    partial = folder.with_name(folder.name + ".partial")
    remove_tree(partial)
    partial.mkdir(parents=True)
    save_diffusers(partial, lora, lora_config)
    save_kohya(partial / f"{kohya_name}.safetensors", lora, rank, alpha, kohya_name)
    if state is not None:
        torch.save(state, partial / STATE_FILE)
    for entry in partial.iterdir():
        with open(entry, "rb") as handle:
            os.fsync(handle.fileno())
    remove_tree(folder)
    os.replace(partial, folder)
    return CheckpointFiles(folder, folder / DIFFUSERS_FILE, folder / f"{kohya_name}.safetensors")


def read_training_state(folder: Path) -> dict | None:
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def drop_training_state(folder: Path) -> None:
    (folder / STATE_FILE).unlink(missing_ok=True)


async def prune_checkpoints(db: aiosqlite.Connection, data: DataDir, run_id: int, keep: int) -> list[int]:
    """Delete all but the newest `keep` checkpoints of a run (files, rows and their validation images).

    A checkpoint a pet uses or the run chose is never deleted. Returns the deleted steps.
    """
    checkpoints = await runs.list_checkpoints(db, run_id)
    deleted = []
    for checkpoint in checkpoints[: max(0, len(checkpoints) - keep)]:
        if await runs.checkpoint_in_use(db, checkpoint.id):
            continue
        for image in await runs.delete_checkpoint(db, checkpoint.id):
            data.abs(image.path).unlink(missing_ok=True)
        remove_tree(data.abs(checkpoint.path))
        deleted.append(checkpoint.step)
    return deleted
