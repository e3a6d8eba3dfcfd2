"""Giving back the jobs of workers that died, so a crash loses at most the work since the last checkpoint.

A worker's id names its host and process id. A running job whose worker process is gone
(same host, pid no longer alive) is requeued at once; one whose worker is on another host
or otherwise silent is requeued once its heartbeat is older than `STALE_AFTER_S`. The
training run then resumes from its latest checkpoint when the job runs again. Each claim
counts as an attempt, so a job that keeps killing its worker fails after
`settings.max_job_attempts` with the reason kept.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import aiosqlite

from engine.settings import Settings
from storage import jobs

log = logging.getLogger(__name__)

# Workers beat every few seconds even while a training step runs (the step runs in a
# thread); two minutes of silence means the process is hung or its machine is gone.
STALE_AFTER_S = 120.0


def make_worker_id(gpu: int | None) -> str:
    """'host:pid:gpuN' (or ':cpu'): unique among live workers, and enough to tell whether one died."""
    where = f"gpu{gpu}" if gpu is not None else "cpu"
    return f"{socket.gethostname()}:{os.getpid()}:{where}"


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


def why_gone(worker_id: str | None, heartbeat_age_s: float | None, own_id: str) -> str | None:
    """The reason a running job's worker is gone, or None while it may still be working."""
    if worker_id is None:
        return "it was running without a worker"
    if worker_id == own_id:
        return None
    host, _, rest = worker_id.partition(":")
    pid_text = rest.partition(":")[0]
    if host == socket.gethostname() and pid_text.isdigit() and not process_alive(int(pid_text)):
        return "its worker process stopped while running it"
    if heartbeat_age_s is None or heartbeat_age_s > STALE_AFTER_S:
        return f"its worker went silent for more than {STALE_AFTER_S:.0f} s"
    return None


async def recover_orphans(db: aiosqlite.Connection, settings: Settings, own_id: str) -> list[jobs.Job]:
    """Requeue (or fail, after too many tries) every running job whose worker is gone; returns them."""
    recovered = []
    for job in await jobs.running_jobs(db):
        reason = why_gone(job.worker_id, await jobs.heartbeat_age_s(db, job.id), own_id)
        if reason is None:
            continue
        after = await jobs.requeue_or_fail(db, job.id, job.worker_id, settings.max_job_attempts, reason)
        log.warning("job #%s (%s): %s; now %s", job.id, job.kind, reason, after.status)
        recovered.append(after)
    return recovered
