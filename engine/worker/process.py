"""The worker process: `python -m engine.worker [--gpu N]`.

It loads the base model once, gives back the jobs of workers that died, then lets its
scheduler claim and run jobs one at a time until it is told to stop. SIGTERM / SIGINT
hand a running job back to the queue (a training resumes from its latest checkpoint) and
exit at once, instead of waiting minutes for the training to end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

import aiosqlite
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from engine.settings import Settings, SettingsError
from engine.worker import chores
from engine.worker.recovery import make_worker_id, recover_orphans
from engine.worker.scheduler import build_scheduler
from storage import jobs
from storage.db import connect
from storage.files import DataDir

log = logging.getLogger(__name__)


class Worker:
    """One worker: one device, one resident base model, one job at a time."""

    def __init__(self, settings: Settings, gpu: int | None = None) -> None:
        self.settings = settings
        self.gpu = gpu
        self.data = DataDir(settings.data_dir)
        self.worker_id = make_worker_id(gpu)
        self.stopped = asyncio.Event()
        self._stopping = False
        # Separate connections, so a chore or a generation served between training steps
        # never opens a transaction inside one the main job has open.
        self.db: aiosqlite.Connection | None = None
        self.side_db: aiosqlite.Connection | None = None
        self.chore_db: aiosqlite.Connection | None = None
        self.scheduler: AsyncIOScheduler | None = None

    async def start(self) -> None:
        from engine.models import load_base_model
        from engine.worker.executor import Executor

        self.db = await connect(self.settings.db_path)
        self.side_db = await connect(self.settings.db_path)
        self.chore_db = await connect(self.settings.db_path)
        await recover_orphans(self.chore_db, self.settings, self.worker_id)
        log.info("worker %s: loading %s", self.worker_id, self.settings.model)
        base = await asyncio.to_thread(load_base_model, self.settings, self.gpu)
        if self._stopping:
            return  # told to stop while loading: nothing was claimed yet
        self.executor = Executor(self.settings, self.data, base, self.worker_id, self.db, self.side_db)
        retention = self._retention if self.settings.keep_generations_days > 0 else None
        self.scheduler = build_scheduler(self._work, self._heartbeat, self._recover, self._clean_tmp, retention)
        self.scheduler.start()
        log.info("worker %s ready on %s", self.worker_id, base.device)

    async def _work(self) -> None:
        """Drain the queue: claim the next job by the queue policy and run it, until none is left.

        With the queue empty, compile the generator's next block variant (a few seconds at most)
        and look again: pictures get faster in idle time, and no job waits for the compiler."""
        while not self._stopping:
            job = await jobs.claim_next_job(self.db, self.worker_id)
            if job is None:
                if await asyncio.to_thread(self.executor.generator.compile_ahead):
                    continue
                return
            await self.executor.run(self.db, job)

    async def _heartbeat(self) -> None:
        await jobs.heartbeat(self.chore_db, self.worker_id)

    async def _recover(self) -> None:
        await recover_orphans(self.chore_db, self.settings, self.worker_id)

    async def _clean_tmp(self) -> None:
        removed = await asyncio.to_thread(chores.clean_tmp, self.data)
        if removed:
            log.info("removed %d expired temporary files", removed)

    async def _retention(self) -> None:
        await chores.prune_generations(self.chore_db, self.data, self.settings.keep_generations_days)
        await chores.prune_events(self.chore_db)

    async def stop(self) -> None:
        """Hand running jobs back to the queue and end the process without waiting for them.

        Safe at any moment, also while the model is still loading."""
        if self._stopping:
            return
        self._stopping = True
        log.info("worker %s stopping", self.worker_id)
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        released = False
        if self.chore_db is not None:
            for job in await jobs.running_jobs(self.chore_db):
                if job.worker_id == self.worker_id:
                    await jobs.release_job(self.chore_db, job.id, self.worker_id)
                    released = True
        if released:
            # The job's torch thread cannot be interrupted; the queue already has the job back.
            logging.shutdown()
            os._exit(0)
        self.stopped.set()

    async def close(self) -> None:
        for connection in (self.db, self.side_db, self.chore_db):
            if connection is not None:
                await connection.close()


async def run_worker(settings: Settings, gpu: int | None = None) -> int:
    worker = Worker(settings, gpu)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: asyncio.ensure_future(worker.stop()))
    from engine.models import ModelNotFound

    try:
        await worker.start()
        await worker.stopped.wait()
    except ModelNotFound as error:
        log.error("%s", error)
        return 1
    finally:
        await worker.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.worker", description="Run one Pawtrait GPU worker.")
    parser.add_argument("--gpu", type=int, metavar="N", help="CUDA device index to use (default: the first)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"pawtrait worker: {error}", file=sys.stderr)
        return 2
    return asyncio.run(run_worker(settings, args.gpu))
