"""Giving back the jobs of workers that died, so a crash loses at most the work since the last checkpoint.

A worker's id names its host, process and a random boot id ('host:pid:gpu0:3fa9c1'): the
boot id tells a restarted container (same host name, same pid) from the worker it replaces.
A running job whose worker process is gone (same host, pid no longer alive) is requeued at
once; one whose worker is on another host, or silent, is requeued once its heartbeat is
older than `settings.worker_timeout_s` on the database's clock. The training then resumes
from its latest checkpoint wherever it runs next, and the silent worker, should it wake
up, finds its writes fenced off (storage.jobs.LeaseLost). Each claim counts as an attempt,
so a job that keeps killing its worker fails after `settings.max_job_attempts` tries.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from config.settings import Settings
from storage import jobs
from storage.db import Queries

log = logging.getLogger(__name__)


def make_worker_id(host_id: str, gpu: int | None) -> str:
    """'host:pid:gpuN:boot' (or ':cpu:'): unique among all workers ever started."""
    where = f"gpu{gpu}" if gpu is not None else "cpu"
    return f"{host_id}:{os.getpid()}:{where}:{secrets.token_hex(3)}"


def process_alive(pid: int) -> bool:
    """Whether a process with that id exists and is not a zombie (killed but not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        # The state letter follows the parenthesised command name, which may contain spaces.
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass(frozen=True)
class Gone:
    reason: str
    silent: bool  # judged by its silence alone (it may still beat before we act)


def why_gone(worker_id: str, silent_s: float | None, own_id: str, host_id: str, timeout_s: float) -> Gone | None:
    """Why a running job's worker is gone, or None while it may still be working."""
    if worker_id == own_id:
        return None
    host, _, rest = worker_id.partition(":")
    pid_text = rest.partition(":")[0]
    if host == host_id and pid_text.isdigit() and not process_alive(int(pid_text)):
        return Gone("its worker process stopped while running it", silent=False)
    if silent_s is None or silent_s > timeout_s:
        return Gone(f"its worker went silent for more than {timeout_s:.0f} s", silent=True)
    return None


async def recover_orphans(db: Queries, settings: Settings, own_id: str) -> list[jobs.Job]:
    """Requeue (or fail, after too many tries) every running job whose worker is gone; returns them."""
    recovered = []
    for running in await jobs.running_jobs(db):
        job = running.job
        gone = why_gone(job.lease.worker_id, running.silent_s, own_id, settings.host_id, settings.worker_timeout_s)
        if gone is None:
            continue
        # A worker judged by its silence keeps the job if it beat meanwhile: checked again, on
        # the database's clock, in the transaction that would requeue it.
        after = await jobs.requeue_or_fail(
            db, job.lease, settings.max_job_attempts, gone.reason,
            silent_for_s=settings.worker_timeout_s if gone.silent else None,
        )
        if after.status != "running" or after.attempts != job.attempts:
            log.warning("job #%s (%s): %s; now %s", job.id, job.kind, gone.reason, after.status)
            recovered.append(after)
    return recovered
