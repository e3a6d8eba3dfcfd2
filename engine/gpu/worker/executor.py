"""Running one claimed job through the engines, and recording what happens to it.

A training serves waiting generations between two optimizer steps (`between_steps`): the
training thread pauses at a step boundary, the generations run on the same resident
pipeline with their pets' LoRA adapters (the Generator restores the training adapter's
state afterwards), and the training carries on. So a `/imagine` waits at most one
optimizer step plus its own painting, never a whole training. When another worker is
idle, the training leaves the generation to it instead of pausing. The training thread asks
whether to pause, and whether its job was cancelled, without waiting for the database: the
event loop keeps the answers fresh while a job runs (engine.gpu.worker.step_state).

Every write about a job goes through its lease (storage.fencing): if the job was taken
over by another worker while this one was frozen, nothing more is written and the job is
dropped here. Any exception fails only its job, with a plain-words reason; the worker
frees what the job left on the GPU and goes on with the next job.

Every picture is screened here before any front end can show it (engine.gpu.safety): finished
pictures and validation rounds carry their verdicts in their rows and events, and a flagged
preview is never published. A training's photos are checked for people before it starts.
A worker that cannot screen refuses its jobs instead of painting unscreened pictures.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable
from itertools import groupby
from typing import Any

from config.settings import Settings
from engine.gpu.generation.generator import Preview
from engine.gpu.generation.service import generate_and_record, open_rgb
from engine.gpu.loop_hop import hop
from engine.gpu.models import BaseModel
from engine.gpu.process_models import ProcessModels
from engine.gpu.safety.people import refuse_people
from engine.gpu.safety.screening import Screening
from engine.gpu.scoring.scorer import Scorer
from engine.gpu.training.loop import TRAINING_ADAPTER
from engine.gpu.training.service import execute_run
from engine.gpu.worker.events import PREVIEW_INTERVAL_S, PROGRESS_INTERVAL_S, LoopBridge, Throttle
from engine.gpu.worker.failures import describe_failure, is_out_of_memory, release_memory
from engine.gpu.worker.scheduler import HEARTBEAT_S
from engine.gpu.worker.step_state import SERVED_BETWEEN_STEPS, StepState, keep_fresh
from engine.usecases.jobs.contract import ContractError, Event, to_json
from engine.usecases.jobs.events import Progress
from engine.usecases.jobs.generate import GeneratePayload, GenerateResult
from engine.usecases.jobs.generate import Preview as PreviewEvent
from engine.usecases.jobs.registry import KINDS, job_kind, runner_of
from engine.usecases.jobs.train import Checkpoint, TrainPayload, TrainResult, Validation, ValidationShown
from engine.usecases.training.hooks import TrainingHooks
from engine.usecases.training.params import DEFAULT_STEPS, TrainingParams
from storage import jobs, keys, runs
from storage.audit import record_audit
from storage.db import Database, Queries
from storage.fencing import FencedDatabase
from storage.files import DataDir, FileStore
from storage.pets import get_pet
from storage.runs import ValidationImage, set_validation_verdict
from storage.wakeup import Wakeup

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """Raised inside a generation's step callback when its job was cancelled."""


def _format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    return f", about {minutes}m{secs:02d}s left" if minutes else f", about {secs}s left"


class JobReporter:
    """One job's progress, previews and milestones as fenced job-row updates and events, from any thread."""

    def __init__(
        self, db: Database, store: FileStore, job: jobs.Job, bridge: LoopBridge, screening: Screening | None = None
    ) -> None:
        self.db, self.store, self.job, self.bridge = db, store, job, bridge
        self.screening = screening  # None: pictures are reported without verdicts
        self.lease = job.lease
        self._progress = Throttle(PROGRESS_INTERVAL_S)
        self._preview = Throttle(PREVIEW_INTERVAL_S)
        self._previews_withheld = False  # a flagged preview stops the job's previews: the picture converges

    def event(self, event: Event) -> None:
        self.bridge.submit(self._record(event))

    async def _record(self, event: Event) -> None:
        await jobs.record_job_event(self.db, self.lease, event.name, to_json(event))

    def training_progress(self, info: Any) -> None:
        step, total = int(info.step), int(info.total)
        if not self._progress.ready(force=step >= total):
            return
        loss = getattr(info, "loss", None)
        eta = getattr(info, "eta_s", None)
        text = f"step {step}/{total}" + (f", loss {loss:.4f}" if loss is not None else "") + _format_eta(eta)
        event = to_json(Progress(step, total, loss, eta))
        self.bridge.submit(jobs.set_progress(self.db, self.lease, step / max(total, 1), text, event))

    def checkpoint(self, step: int, checkpoint_id: int) -> None:
        self.event(Checkpoint(int(step), int(checkpoint_id)))

    def validation(self, step: int, images: list[ValidationImage]) -> None:
        """Screen a stored round, record the verdicts and announce it (on the loop, without waiting)."""
        self.bridge.submit(self._announce_validation(step, images))

    async def _announce_validation(self, step: int, images: list[ValidationImage]) -> None:
        verdicts = await self._validation_verdicts(images)
        shown = tuple(
            ValidationShown(image.id, image.path, image.prompt, image.seed, image.dino, image.clip_i, image.clip_t,
                            flagged)
            for image, flagged in zip(images, verdicts)
        )
        await self._record(Validation(int(step), shown))

    async def _validation_verdicts(self, images: list[ValidationImage]) -> list[bool | None]:
        """Each picture's verdict: the stored one (a round announced again), else screened now."""
        unscreened = [image for image in images if image.flagged is None]
        if self.screening is None or not self.screening.enabled or not unscreened:
            return [image.flagged for image in images]
        pictures = [await asyncio.to_thread(open_rgb, await self.store.local_path(image.path)) for image in unscreened]
        found = dict(zip((image.id for image in unscreened), await asyncio.to_thread(self.screening.flags, pictures)))
        for image_id, flagged in found.items():
            await set_validation_verdict(self.db, image_id, flagged)
        await audit_verdicts(self.db, self.job, "training round", list(found.values()),
                             f"validation images of step {unscreened[0].step}")
        return [found.get(image.id, image.flagged) for image in images]

    def generation_step(self, step: int, total: int, preview: Preview, stop: Callable[[], bool]) -> None:
        """Progress and a preview at most once a second; raises JobCancelled once the job is cancelled."""
        if step < total and not self._previews_withheld and self._preview.ready():
            if stop():
                raise JobCancelled()
            image = preview()
            verdicts = self.screening.flags([image]) if self.screening is not None else None  # None: unscreened
            if verdicts and verdicts[0]:
                self._previews_withheld = True
            else:
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                self.bridge.submit(self._publish_preview(buffer.getvalue(), step, total))
        if self._progress.ready(force=step >= total):
            text = f"step {step}/{total}"
            self.bridge.submit(
                jobs.set_progress(self.db, self.lease, step / total, text, to_json(Progress(step, total)))
            )

    async def _publish_preview(self, png: bytes, step: int, total: int) -> None:
        key = keys.preview(self.job.id, step)
        await self.store.put_bytes(key, png)
        await self._record(PreviewEvent(key, step, total))


class Executor:
    """Runs jobs on one worker's resident base model."""

    def __init__(
        self, settings: Settings, db: Database, store: FileStore, data: DataDir, base: BaseModel, worker_id: str,
        wakeup: Wakeup | None = None,
    ) -> None:
        """`wakeup`: the worker's (its notifications refresh `state` at once); None: a poll every POLL_S."""
        # Each kind's runner, as its contract names it; a kind without one stops the worker here.
        self.runners = {name: runner_of(kind) for name, kind in KINDS.items()}
        self.settings, self.db, self.store, self.data, self.base = settings, db, store, data, base
        self.worker_id = worker_id
        self.loop = asyncio.get_running_loop()
        models = ProcessModels.around(base, settings)
        self.generator, self.scorer = models.generator, models.scorer  # the scoring models load at the first round
        # The training step compiled in idle time for the plan a default run gets (where it compiles).
        self.training_ahead = models.training_compile(settings)
        if self.training_ahead is not None:
            self.training_ahead.want(TrainingParams.for_steps(DEFAULT_STEPS, settings))
        self.screening = Screening.from_settings(settings, base.device)
        # The people check needs the scoring CLIP model even where scores are off.
        self.photo_checker = (self.scorer or Scorer.from_settings(settings, always=True)) if settings.safety else None
        self.running: set[int] = set()
        self.lost: set[int] = set()  # jobs whose lease another worker holds now
        self.wakeup = wakeup or Wakeup()
        self.state = StepState()  # what the training thread asks between steps, fresh while a job runs

    def compile_ahead(self) -> bool:
        """One piece of idle-time compiling (seconds at most): the pictures' shapes first, as people
        wait on those, then the training step. False when there is nothing left to compile."""
        if self.generator.compile_ahead():
            return True
        if self.training_ahead is None:
            return False
        try:
            return self.training_ahead.step()
        except Exception:
            log.exception("compiling the training step ahead failed; trainings run uncompiled")
            self.training_ahead.pause()
            self.training_ahead = None
            return False

    def still_held(self, beat: set[int], held: set[int]) -> None:
        """What the heartbeat renewed (`held` of the jobs `beat` for): a job missing from it was
        taken over elsewhere (unless it ended meanwhile)."""
        for job_id in (beat - held) & self.running:
            if job_id not in self.lost:
                log.warning("job #%s was given to another worker (this one was silent too long); stopping it", job_id)
            self.lost.add(job_id)

    async def run(self, job: jobs.Job) -> jobs.Job | None:
        """Run a claimed job to its end and record the outcome (None: it moved to another worker).

        Never raises for a job's own failure."""
        if self.training_ahead is not None:
            await asyncio.to_thread(self.training_ahead.pause)  # its rehearsal adapter off the UNet
        bridge = LoopBridge(self.loop)
        reporter = JobReporter(self.db, self.store, job, bridge, self.screening)
        fenced = FencedDatabase(self.db, job.lease)
        # The outermost job keeps the state fresh, for itself and the generations it serves.
        keeper = None if self.running else asyncio.create_task(
            keep_fresh(self.state, self.wakeup, self.db, self.worker_id, self.running, HEARTBEAT_S))
        self.running.add(job.id)
        log.info("job #%s (%s) started, attempt %s", job.id, job.kind, job.attempts)
        try:
            payload = job_kind(job.kind).payload_of(job)  # ContractError: a request this version cannot read
            status, outcome, error = await self.runners[job.kind](self, fenced, job, payload, reporter)
            result = None if outcome is None else to_json(outcome)
        except JobCancelled:
            status, result, error = "cancelled", None, None
        except jobs.LeaseLost:
            self.lost.add(job.id)
        except Exception as exc:
            log.exception("job #%s (%s) failed", job.id, job.kind)
            status, result, error = "failed", None, describe_failure(job.kind, exc)
            self._free_after_failure(job, exc)
        finally:
            self.running.discard(job.id)
            if keeper is not None:
                keeper.cancel()
                await asyncio.gather(keeper, return_exceptions=True)  # the worker's wake-up is its own again
        await bridge.flush()
        if job.id in self.lost:
            log.warning("job #%s (%s) dropped: another worker runs it now; nothing more was recorded here", job.id, job.kind)
            return None
        try:
            finished = await jobs.finish_job(self.db, job.lease, status, result, error)
        except jobs.LeaseLost:
            log.warning("job #%s (%s) finished here after another worker took it over; its result is dropped",
                        job.id, job.kind)
            return None
        log.info("job #%s (%s) %s%s", job.id, job.kind, status, f": {error}" if error else "")
        return finished

    def _free_after_failure(self, job: jobs.Job, error: Exception) -> None:
        adapters = (TRAINING_ADAPTER,) if job.kind == "train" else ()
        if is_out_of_memory(error):
            self.generator.release_graphs()
            for key in self.generator.loras.loaded():
                self.generator.loras.evict(key)
        release_memory(self.base, adapters)

    def _stopped(self, job_id: int) -> bool:
        """From an engine thread, without waiting: was the job cancelled, or did it move to another worker?"""
        return job_id in self.lost or job_id in self.state.cancelled

    async def run_generation(
        self, db: FencedDatabase, job: jobs.Job, payload: GeneratePayload, reporter: JobReporter
    ) -> tuple[str, GenerateResult, None]:
        request = payload.request
        await asyncio.to_thread(self.screening.require)

        def on_step(step: int, total: int, preview: Preview) -> None:
            reporter.generation_step(step, total, preview, lambda: self._stopped(job.id))

        outcome = await generate_and_record(
            db, self.store, self.data, self.generator, request, job.guild_id, job.user_id, on_step=on_step,
            screen=self.screening.flags,
        )
        await jobs.set_links(self.db, job.lease, generation_id=outcome.generation_id)
        if outcome.flagged is not None:
            await audit_verdicts(db, job, "picture screening", outcome.flagged, "pictures",
                                 prompt=request.prompt, seed=outcome.seeds[0] if outcome.seeds else None,
                                 generation_id=outcome.generation_id)
        return "succeeded", outcome.to_result(), None

    async def run_training(
        self, db: FencedDatabase, job: jobs.Job, payload: TrainPayload, reporter: JobReporter
    ) -> tuple[str, TrainResult, str | None]:
        run_id = job.run_id if job.run_id is not None else payload.run_id
        if run_id is None:
            raise ContractError(f"job #{job.id} names no training run")
        await jobs.set_links(self.db, job.lease, run_id=run_id)
        run = await runs.get_run(db, run_id)
        if run is not None and run.status == "succeeded":
            # The worker died after the run ended but before the job did: nothing left to do.
            return "succeeded", TrainResult(run_id, run.status, run.step), None
        if run is not None:
            try:
                await self._screen_training(db, run)
            except ValueError as refusal:  # people in the photos, or no way to screen: the run cannot start
                await runs.finish_run(db, run_id, "failed", run.step, str(refusal))
                await record_audit(db, job.guild_id, job.user_id, "photo screening", "refused", detail=str(refusal),
                                   job_id=job.id)
                return "failed", TrainResult(run_id, "failed", run.step), str(refusal)
        # A worker that died between writing validation images and announcing them leaves them
        # unseen: announce what no front end has posted yet (front ends skip what they posted).
        for step, images in groupby(await runs.unposted_validation_images(db, run_id), key=lambda image: image.step):
            reporter.validation(step, list(images))
        hooks = TrainingHooks(
            on_progress=reporter.training_progress,
            on_checkpoint=reporter.checkpoint,
            on_validation=reporter.validation,
            should_cancel=lambda: self._stopped(job.id),
            between_steps=self._between_steps,
        )
        self.generator.release_graphs()  # the training plans its mode from the free memory
        try:
            outcome = await execute_run(db, self.store, self.data, self.generator, run_id, hooks, scorer=self.scorer,
                                        compile_ahead=self.training_ahead)
        finally:
            release_memory(self.base, (TRAINING_ADAPTER,))
        return outcome.status, TrainResult(run_id, outcome.status, outcome.step), outcome.error

    async def _screen_training(self, db: FencedDatabase, run: runs.Run) -> None:
        """Before the first step: its pictures can be screened, and its photos show no person."""
        await asyncio.to_thread(self.screening.require)
        pet = await get_pet(db, run.pet_id)
        if self.photo_checker is not None and pet is not None:
            await refuse_people(db, self.store, pet, self.photo_checker, self.base.device)

    # --- called from the training thread at optimizer-step boundaries ---------------------

    def _between_steps(self, make_room: Callable[[], None]) -> None:
        """Serve every waiting generation now, on the same resident pipeline, then let training go on."""
        if self.state.serve:
            make_room()
            hop(self.loop, self._serve_generations).result()

    async def _serve_generations(self) -> None:
        while (job := await jobs.claim_next_job(
            self.db, self.worker_id, kinds=SERVED_BETWEEN_STEPS, running=self.running
        )) is not None:
            await self.run(job)
        self.state.serve = False  # none left: until the next wake-up says otherwise


async def audit_verdicts(
    db: Queries, job: jobs.Job, command: str, flagged: list[bool], what: str, **line: Any
) -> None:
    """One audit line for the safety check's verdicts on a set of pictures: which were flagged, if any."""
    numbers = [str(index + 1) for index, hit in enumerate(flagged) if hit]
    verdict = "flagged" if numbers else "passed"
    detail = f"{what}: {len(flagged)} screened" + (f", flagged: {', '.join(numbers)}" if numbers else ", none flagged")
    await record_audit(db, job.guild_id, job.user_id, command, verdict, detail=detail, job_id=job.id, **line)
