"""Turning a job's exception into a plain-words reason, and freeing what the job left on the GPU."""

from __future__ import annotations

import gc
import logging

import torch

from engine.gpu.models import BaseModel
from engine.usecases.jobs.registry import job_kind

log = logging.getLogger(__name__)


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return "out of memory" in text or "can't allocate memory" in text


def describe_failure(kind: str, error: BaseException) -> str:
    """One sentence for the member: what went wrong and what to do about it.

    Members see this (the bot adds the job's number); anything else, such as a database
    error quoting its SQL and parameters, a file path, a host or an exception's class,
    stays in the worker's log, where the job's number finds it."""
    spec = job_kind(kind)
    if is_out_of_memory(error):
        return f"ran out of GPU memory while {spec.doing}; {spec.out_of_memory_advice}"
    return input_error(error) or f"{spec.doing} failed because of {SERVER_PROBLEM}"


SERVER_PROBLEM = "a problem on the server; try again later, or ask an admin to check the log"


def input_error(error: BaseException) -> str | None:
    """The error's own words where they are written for members (the engines' input errors,
    ValueError), else None: any other error's text stays in the log."""
    return str(error) if isinstance(error, ValueError) and str(error) else None


def release_memory(base: BaseModel, adapters: tuple[str, ...] = ()) -> None:
    """Drop the named LoRA adapters from the shared UNet and give cached GPU memory back."""
    unet = base.pipe.unet
    present = [name for name in adapters if name in (getattr(unet, "peft_config", None) or {})]
    if present:
        try:
            unet.delete_adapters(present)
        except Exception:  # freeing memory must never take the worker down
            log.exception("could not delete adapters %s", present)
    gc.collect()
    if base.device.type == "cuda":
        torch.cuda.empty_cache()
