"""Running one claimed job through the engines, and recording what happens to it.

A training serves waiting generations between two optimizer steps (`between_steps`): the
training thread pauses at a step boundary, the generations run on the same resident
pipeline with their pets' LoRA adapters (the Generator restores the training adapter's
state afterwards), and the training carries on. So a `/imagine` waits at most one
optimizer step plus its own painting, never a whole training.

Any exception fails only its job, with a plain-words reason; the worker frees what the
job left on the GPU and goes on with the next job.
"""

from __future__ import annotations

import asyncio
import logging
from itertools import groupby
from collections.abc import Callable, Coroutine
from typing import Any

import aiosqlite

from engine.generation.generator import Generator, Preview
from engine.generation.request import GenerationRequest
from engine.generation.service import generate_and_record
from engine.models import BaseModel
from engine.settings import Settings
from engine.training.hooks import TrainingHooks
from engine.training.service import execute_run
from engine.worker.events import PREVIEW_INTERVAL_S, PROGRESS_INTERVAL_S, LoopBridge, Throttle
from engine.worker.failures import describe_failure, is_out_of_memory, release_memory
from storage import jobs, runs
from storage.files import DataDir, atomic_path
from storage.runs import ValidationImage

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """Raised inside a generation's step callback when its job was cancelled."""


def _format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    return f", about {minutes}m{secs:02d}s left" if minutes else f", about {secs}s left"


class JobReporter:
    """One job's progress, previews and milestones as job-row updates and events, from any thread."""

    def __init__(self, db: aiosqlite.Connection, data: DataDir, job: jobs.Job, bridge: LoopBridge) -> None:
        self.db, self.data, self.job, self.bridge = db, data, job, bridge
        self._progress = Throttle(PROGRESS_INTERVAL_S)
        self._preview = Throttle(PREVIEW_INTERVAL_S)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        self.bridge.submit(jobs.record_event(self.db, self.job.id, kind, data))

    def training_progress(self, info: Any) -> None:
        step, total = int(info.step), int(info.total)
        if not self._progress.ready(force=step >= total):
            return
        loss = getattr(info, "loss", None)
        eta = getattr(info, "eta_s", None)
        text = f"step {step}/{total}" + (f", loss {loss:.4f}" if loss is not None else "") + _format_eta(eta)
        event = {"step": step, "total": total, "loss": loss, "eta_s": eta}
        self.bridge.submit(jobs.set_progress(self.db, self.job.id, step / max(total, 1), text, event))

    def checkpoint(self, step: int, checkpoint_id: int) -> None:
        self.event("checkpoint", {"step": int(step), "checkpoint_id": int(checkpoint_id)})

    def validation(self, step: int, images: list[ValidationImage]) -> None:
        rows = [{"id": image.id, "path": image.path, "prompt": image.prompt, "seed": image.seed} for image in images]
        self.event("validation", {"step": int(step), "images": rows})

    def generation_step(self, step: int, total: int, preview: Preview) -> None:
        """Progress and a preview at most once a second; raises JobCancelled once the job is cancelled."""
        if step < total and self._preview.ready():
            if self.bridge.call(jobs.cancel_requested(self.db, self.job.id)):
                raise JobCancelled()
            path = self.data.tmp_dir() / f"preview-job{self.job.id}-step{step}.png"
            with atomic_path(path) as tmp:
                preview().save(tmp, format="PNG")
            self.event("preview", {"path": self.data.rel(path), "step": step, "total": total})
        if self._progress.ready(force=step >= total):
            text = f"step {step}/{total}"
            self.bridge.submit(jobs.set_progress(self.db, self.job.id, step / total, text, {"step": step, "total": total}))


class Executor:
    """Runs jobs on one worker's resident base model."""

    def __init__(
        self,
        settings: Settings,
        data: DataDir,
        base: BaseModel,
        worker_id: str,
        db: aiosqlite.Connection,
        side_db: aiosqlite.Connection,
    ) -> None:
        self.settings, self.data, self.base, self.worker_id = settings, data, base, worker_id
        self.db, self.side_db = db, side_db
        self.loop = asyncio.get_running_loop()
        self.generator = Generator.from_settings(base, settings)

    async def run(self, db: aiosqlite.Connection, job: jobs.Job) -> jobs.Job:
        """Run a claimed job to its end and record the outcome; never raises for a job's own failure."""
        bridge = LoopBridge(self.loop)
        reporter = JobReporter(db, self.data, job, bridge)
        log.info("job #%s (%s) started, attempt %s", job.id, job.kind, job.attempts)
        try:
            if job.kind == "generate":
                status, result, error = await self._generate(db, job, reporter)
            elif job.kind == "train":
                status, result, error = await self._train(db, job, reporter)
            else:
                raise ValueError(f"this worker does not run {job.kind!r} jobs")
        except JobCancelled:
            status, result, error = "cancelled", None, None
        except Exception as exc:
            log.exception("job #%s (%s) failed", job.id, job.kind)
            status, result, error = "failed", None, describe_failure(job.kind, exc)
            self._free_after_failure(job, exc)
        await bridge.flush()
        finished = await jobs.finish_job(db, job.id, status, result, error)
        log.info("job #%s (%s) %s%s", job.id, job.kind, status, f": {error}" if error else "")
        return finished

    def _free_after_failure(self, job: jobs.Job, error: Exception) -> None:
        adapters = (f"train-{job.payload.get('run_id')}",) if job.kind == "train" else ()
        if is_out_of_memory(error):
            self.generator.release_graphs()
            for checkpoint_id in self.generator.loras.loaded():
                self.generator.loras.evict(checkpoint_id)
        release_memory(self.base, adapters)

    async def _generate(self, db: aiosqlite.Connection, job: jobs.Job, reporter: JobReporter):
        request = GenerationRequest.from_dict(job.payload["request"])
        outcome = await generate_and_record(
            db, self.data, self.generator, request, job.guild_id, job.user_id, on_step=reporter.generation_step
        )
        await jobs.set_links(db, job.id, generation_id=outcome.generation_id)
        return "succeeded", outcome.to_result(), None

    async def _train(self, db: aiosqlite.Connection, job: jobs.Job, reporter: JobReporter):
        run_id = int(job.payload["run_id"])
        await jobs.set_links(db, job.id, run_id=run_id)
        run = await runs.get_run(db, run_id)
        if run is not None and run.status == "succeeded":
            # The worker died after the run ended but before the job did: nothing left to do.
            return "succeeded", {"run_id": run_id, "status": run.status, "step": run.step}, None
        # A worker that died between writing validation images and announcing them leaves them
        # unseen: announce what no front end has posted yet (front ends skip what they posted).
        for step, images in groupby(await runs.unposted_validation_images(db, run_id), key=lambda image: image.step):
            reporter.validation(step, list(images))
        hooks = TrainingHooks(
            on_progress=reporter.training_progress,
            on_checkpoint=reporter.checkpoint,
            on_validation=reporter.validation,
            should_cancel=lambda: self._cancel_requested(job.id),
            between_steps=self._between_steps,
        )
        self.generator.release_graphs()  # the training plans its mode from the free memory
        try:
            outcome = await execute_run(db, self.data, self.base, run_id, hooks)
        finally:
            release_memory(self.base, (f"train-{run_id}",))
        result = {"run_id": run_id, "status": outcome.status, "step": outcome.step}
        return outcome.status, result, outcome.error

    # --- called from the training thread at optimizer-step boundaries ---------------------

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def _cancel_requested(self, job_id: int) -> bool:
        return bool(self._call(jobs.cancel_requested(self.side_db, job_id)))

    def _between_steps(self, make_room: Callable[[], None]) -> None:
        """Serve every waiting generation now, on the same resident pipeline, then let training go on."""
        if self._call(jobs.has_queued(self.side_db, "generate")):
            make_room()
            self._call(self._serve_generations())

    async def _serve_generations(self) -> None:
        while (job := await jobs.claim_next_job(self.side_db, self.worker_id, kinds=("generate",))) is not None:
            await self.run(self.side_db, job)
