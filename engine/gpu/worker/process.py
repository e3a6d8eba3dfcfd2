"""The worker process: `python -m engine.gpu.worker [--gpu N]`, one per GPU, on any number of hosts.

It loads the base model once, gives back the jobs of workers that died, then claims and
runs jobs one at a time until it is told to stop. An idle worker sleeps until a job is
queued (PostgreSQL LISTEN/NOTIFY, or a short poll on SQLite; storage.wakeup) and compiles
the generator ahead meanwhile. SIGTERM / SIGINT hand a running job back to the queue (a
training resumes from its latest checkpoint) and exit at once, instead of waiting minutes
for the training to end.

With `--gpu N` the worker sees only the N-th visible GPU (CUDA_VISIBLE_DEVICES is narrowed
before CUDA starts, engine.gpu.device.pin_to_gpu), so every thread's default device, its CUDA
graphs and its allocations are on that GPU and never on another worker's.

Every host points at the same database and file store; the worker's own data folder is
a cache (downloaded photos and LoRAs, compiled code) and a place for temporary files.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from config.redaction import scrub_logs
from config.settings import Settings, SettingsError
from engine.gpu.worker import chores
from engine.gpu.worker.recovery import make_worker_id, recover_orphans
from engine.gpu.worker.scheduler import build_scheduler, recover_interval_s
from storage import jobs, workers
from storage.connect import open_storage
from storage.db import Database
from storage.files import DataDir, FileStore
from storage.wakeup import Wakeup, open_wakeup

log = logging.getLogger(__name__)

# An idle worker looks at the queue at least this often even without a wake-up: a
# notification sent while its listening connection was down is lost.
CATCH_UP_S = 2.0


class Worker:
    """One worker: one device, one resident base model, one job at a time."""

    def __init__(self, settings: Settings, gpu: int | None = None) -> None:
        self.settings = settings
        self.gpu = gpu
        self.data = DataDir(settings.data_dir)
        self.worker_id = make_worker_id(settings.host_id, gpu)
        self.stopped = asyncio.Event()
        self._stopping = False
        self.db: Database | None = None
        self.store: FileStore | None = None
        self.wakeup: Wakeup | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import torch

        from engine.gpu.device import GpuNotVisible, pin_to_gpu

        if self.gpu is not None:
            physical = pin_to_gpu(self.gpu)  # before CUDA starts: from here on cuda:0 is this worker's GPU
            if self.settings.device != "cpu" and not torch.cuda.is_available():
                raise GpuNotVisible(f"there is no GPU {self.gpu} here (CUDA_VISIBLE_DEVICES={physical} shows none)")
            log.info("worker %s: GPU %d of those visible (CUDA_VISIBLE_DEVICES=%s)", self.worker_id, self.gpu, physical)
        # After the GPU check, which should not wait for diffusers' imports (6 s on two cores).
        from engine.gpu.models import load_base_model
        from engine.gpu.worker.executor import Executor
        self.db, self.store = await open_storage(self.settings)
        device = f"gpu{self.gpu}" if self.gpu is not None else self.settings.device
        await workers.register(self.db, self.worker_id, self.settings.host_id, device)
        await recover_orphans(self.db, self.settings, self.worker_id)
        log.info("worker %s: loading %s", self.worker_id, self.settings.model)
        base = await asyncio.to_thread(load_base_model, self.settings)
        if self._stopping:
            return  # told to stop while loading: nothing was claimed yet
        self.wakeup = open_wakeup(self.db)  # idle, it waits for jobs; busy, the executor listens for cancels and jobs
        self.executor = Executor(self.settings, self.db, self.store, self.data, base, self.worker_id, self.wakeup)
        await asyncio.to_thread(self.executor.screening.load_at_start)  # says in the log whether pictures are screened
        keeps_all = self.settings.keep_generations_days == 0 and self.settings.audit_days == 0
        retention = None if keeps_all else self._retention
        self.scheduler = build_scheduler(
            recover_interval_s(self.settings.worker_timeout_s), self._heartbeat, self._recover, self._clean_tmp,
            self._sweep, retention, self._drop_copies, self.settings.cache_sweep_s,
        )
        self.scheduler.start()
        self._loop_task = asyncio.create_task(self._work(), name="pawtrait-gpu-loop")
        log.info("worker %s ready on %s", self.worker_id, base.device)

    async def _work(self) -> None:
        """Claim the next job by the queue policy and run it; with the queue empty, compile the
        next block variant for pictures or training (a few seconds at most) or sleep until woken."""
        assert self.db is not None and self.wakeup is not None
        while not self._stopping:
            try:
                self.wakeup.clear()
                job = await jobs.claim_next_job(self.db, self.worker_id, running=self.executor.running)
                if job is not None:
                    await workers.set_state(self.db, self.worker_id, "busy", job.id)
                    await self.executor.run(job)
                    continue
                if await asyncio.to_thread(self.executor.compile_ahead):
                    continue
                await workers.set_state(self.db, self.worker_id, "idle")
                await self.wakeup.wait(CATCH_UP_S)
            except asyncio.CancelledError:
                raise
            except Exception:  # e.g. the database restarting: wait and look again
                log.exception("worker %s: the job loop failed; trying again", self.worker_id)
                await asyncio.sleep(1.0)

    async def _heartbeat(self) -> None:
        running = set(self.executor.running)
        self.executor.still_held(running, await jobs.heartbeat(self.db, self.worker_id, running))
        await workers.beat(self.db, self.worker_id)

    async def _recover(self) -> None:
        await recover_orphans(self.db, self.settings, self.worker_id)
        await workers.prune(self.db, silent_s=3600.0)

    async def _clean_tmp(self) -> None:
        removed = await asyncio.to_thread(chores.clean_local_tmp, self.data)
        removed += await chores.clean_store_tmp(self.store)
        if removed:
            log.info("removed %d expired temporary files", removed)

    async def _sweep(self) -> None:
        await chores.sweep(self.db, self.store)

    async def _drop_copies(self) -> None:
        await chores.drop_deleted_copies(self.store)

    async def _retention(self) -> None:
        if self.settings.keep_generations_days > 0:
            await chores.prune_generations(self.db, self.store, self.settings.keep_generations_days)
            await chores.prune_events(self.db)
        await chores.prune_audit(self.db, self.settings.audit_days)

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
        if self.db is not None:
            for running in await jobs.running_jobs(self.db):
                if running.job.worker_id == self.worker_id:
                    await jobs.release_job(self.db, running.job.lease)
                    released = True
            await workers.forget(self.db, self.worker_id)
        if released:
            # The job's torch thread cannot be interrupted; the queue already has the job back.
            logging.shutdown()
            os._exit(0)
        if self._loop_task is not None:
            self._loop_task.cancel()
        self.stopped.set()

    async def close(self) -> None:
        if self.wakeup is not None:
            await self.wakeup.close()
        if self.db is not None:
            await self.db.close()


async def run_worker(settings: Settings, gpu: int | None = None) -> int:
    worker = Worker(settings, gpu)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: asyncio.ensure_future(worker.stop()))
    from engine.gpu.device import GpuNotVisible

    try:
        await worker.start()
        await worker.stopped.wait()
    except GpuNotVisible as error:
        log.error("%s", error)
        return 1
    except Exception as error:
        # Imported only now: engine.gpu.models imports diffusers (6 s on two cores), and a worker told
        # to use a GPU that is not there says so before it gets that far.
        from engine.gpu.models import ModelNotFound

        if not isinstance(error, ModelNotFound):
            raise
        log.error("%s", error)
        return 1
    finally:
        await worker.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.gpu.worker", description="Run one Pawtrait GPU worker.")
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
    scrub_logs(settings.extra)  # the variables the worker has; it has no Discord token (config.settings)
    return asyncio.run(run_worker(settings, args.gpu))
