"""Training runs as the rest of Pawtrait sees them: create a run row, execute it, record what it wrote.

`execute_run` does the torch work in a thread (asyncio.to_thread) so the worker's event
loop keeps serving; rows, files and the caller's progress/checkpoint/validation hooks are
run back on the event loop (engine.gpu.loop_hop), while `should_cancel` and `between_steps` are
called directly in the training thread at every optimizer-step boundary. The thread waits for
the loop only where it needs an answer: a checkpoint is recorded by one call there (upload, row,
the older state's removal, pruning, the hook), and progress and validation rounds go without
waiting, their failures raised at the next report, checkpoint or the end.

Files come from and go to the file store (the data folder, or a bucket shared by many
hosts): photos and the checkpoint to resume from are fetched into local copies first;
checkpoints and validation images are written into a local folder, published under keys
of their own, and only then recorded, so a row never points at a missing file and a
retried run on another host finds everything it needs.

Validation rounds and class images are painted by the worker's `Generator` (`render`, on the
fast path its requests take), with the training's adapter merged into the weights for validation.
A round's pictures are then encoded, stored and recorded on the event loop while the training
goes on: encoding three 1024² PNGs took 0.6 s of each round on an H200's host (docs/BENCHMARKS.md).
The next checkpoint and the end of the run wait for them, and a failure there fails the run.

With a scorer, each validation round is scored (engine/gpu/scoring) right after it is rendered,
in the training thread on the training's device, and the scores go into the pictures' rows;
a resumed run renders and scores again what came after its checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path

import torch
from PIL import Image

from engine.gpu.generation.generator import Generator
from engine.gpu.generation.renders import Render
from engine.gpu.loop_hop import called, hop
from engine.gpu.scoring.scorer import Scorer, Subject
from engine.gpu.training.cache import build_cache, offload_encoders, restore_encoders
from engine.gpu.training.checkpoints import (
    CheckpointFiles,
    prune_checkpoints,
    read_training_state,
    state_key,
    write_checkpoint,
)
from engine.gpu.training.class_images import ClassImagesCancelled, ensure_class_images
from engine.gpu.training.compile_ahead import TrainingCompileAhead
from engine.gpu.training.loop import (
    TRAINING_ADAPTER,
    Cancelled,
    LoopCallbacks,
    LoopPlan,
    LoraTrainer,
    memory_for_training,
    plan_memory,
    run_loop,
    validates_at,
)
from engine.gpu.worker.failures import SERVER_PROBLEM, input_error
from engine.usecases.jobs.train import out_of_memory_advice
from engine.usecases.scoring.choice import choose_checkpoint
from engine.usecases.scoring.prompts import without_token
from engine.usecases.training.create import training_photos
from engine.usecases.training.hooks import ProgressInfo, RunOutcome, TrainingHooks
from engine.usecases.training.params import TrainingInputError, TrainingParams
from engine.usecases.training.prompts import class_prompt, validation_prompts
from storage import keys, runs
from storage.db import Queries
from storage.files import DataDir, FileMissing, FileStore, remove_tree
from storage.jobs import LeaseLost
from storage.pets import Pet, get_pet
from storage.scores import ImageScores

log = logging.getLogger(__name__)


async def execute_run(
    db: Queries, store: FileStore, data: DataDir, generator: Generator, run_id: int,
    hooks: TrainingHooks | None = None, scorer: Scorer | None = None, compile_ahead: TrainingCompileAhead | None = None,
) -> RunOutcome:
    """Run (or resume from its newest checkpoint) the training of run `run_id` on the generator's
    base model and record the result.

    With a `scorer`, every validation picture is stored with its scores (None: without). The
    blocks run compiled if the run asks for it and `compile_ahead` has compiled its plan.
    """
    hooks = hooks or TrainingHooks()
    run = await runs.get_run(db, run_id)
    if run is None:
        raise TrainingInputError(f"There is no training run {run_id}.")
    if run.status == "succeeded":
        raise TrainingInputError(f"Training run {run_id} already finished; start a new one.")
    pet = await get_pet(db, run.pet_id)
    if pet is None:
        raise TrainingInputError(f"The pet of training run {run_id} no longer exists.")
    params = TrainingParams.from_dict(run.params)  # TrainingInputError if the stored values are not valid
    photos = await training_photos(db, store, pet)

    resume_from = await _resume_point(db, store, run_id)
    start_step = 0 if resume_from is None else resume_from[0]
    session = _Session(db, store, data, generator, run_id, pet, params, photos, hooks, scorer, compile_ahead,
                       asyncio.get_running_loop())
    # The start's round again if it was not stored in full (a run that stopped while storing it).
    stored_round = await runs.list_validation_images(db, run_id, start_step)
    session.validate_first = validates_at(params, start_step) and len(stored_round) < len(session.prompts)
    kept_after = start_step - 1 if session.validate_first else start_step
    await store.delete([image.path for image in await runs.delete_validation_after(db, run_id, kept_after)])
    await runs.mark_running(db, run_id, start_step)
    session.step = start_step
    if resume_from is not None:
        session.checkpoint_ids[start_step] = resume_from[3]
    status, error = "succeeded", None
    try:
        class_paths = await _class_images(db, store, generator, pet, params, session.should_cancel_now)
        generator.release_graphs()  # the training plans its mode from the free memory
        task = asyncio.ensure_future(asyncio.to_thread(session.run, resume_from, class_paths))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # The worker is shutting down: stop at the next step boundary, record it, then go.
            session.stop = True
            await _settle(task)
            raise
    except asyncio.CancelledError:
        await runs.finish_run(db, run_id, "cancelled", session.step, "stopped because the worker shut down")
        raise
    except (Cancelled, ClassImagesCancelled):
        status = "cancelled"
    except torch.OutOfMemoryError:
        log.exception("training run %d ran out of GPU memory", run_id)  # where: for the operator
        status = "failed"
        advice = out_of_memory_advice(session.plan.mode if session.plan is not None else None)
        error = f"out of GPU memory after {session.step} of {params.steps} steps; {advice}"
    except LeaseLost:
        raise  # the job moved to another worker: this one records nothing
    except Exception as failure:  # any failure must end as a recorded, explained run
        log.exception("training run %d failed", run_id)
        status = "failed"
        # What the owner reads: an input error's words, else no internals (paths, SQL, hosts).
        error = f"training failed after {session.step} of {params.steps} steps: {input_error(failure) or SERVER_PROBLEM}"
    await runs.finish_run(db, run_id, status, session.step, error)
    # Votes so far, else the suggestion: chosen and recorded once, here; the bot announces the record.
    kept = await choose_checkpoint(db, run_id, pet) if status == "succeeded" else None
    return RunOutcome(run_id=run_id, status=status, error=error, step=session.step, kept=kept)


async def _settle(task: asyncio.Future) -> None:
    try:
        await task
    except BaseException:  # noqa: BLE001 - the shutdown path only needs the thread to have stopped
        pass


async def _class_images(
    db: Queries, store: FileStore, generator: Generator, pet: Pet, params: TrainingParams,
    should_stop: Callable[[], Awaitable[bool]],
) -> list[Path]:
    if not params.prior_preservation:
        return []
    return await ensure_class_images(
        db, store, generator, pet.class_noun, params.class_images, params.resolution, should_stop=should_stop,
    )


async def _resume_point(db: Queries, store: FileStore, run_id: int) -> tuple[int, dict, str, int] | None:
    """(step, training state, checkpoint key, checkpoint id) of the newest checkpoint that can be resumed from."""
    for checkpoint in reversed(await runs.list_checkpoints(db, run_id)):
        try:
            path = await store.local_path(state_key(checkpoint.path))
        except FileMissing:
            continue  # an older checkpoint: kept for choosing, not for resuming
        return checkpoint.step, await asyncio.to_thread(read_training_state, path), checkpoint.path, checkpoint.id
    return None


class _Session:
    """One execution of a run in the training thread, reporting back to the event loop."""

    def __init__(
        self,
        db: Queries,
        store: FileStore,
        data: DataDir,
        generator: Generator,
        run_id: int,
        pet: Pet,
        params: TrainingParams,
        photos: list[Path],
        hooks: TrainingHooks,
        scorer: Scorer | None,
        compile_ahead: TrainingCompileAhead | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.db, self.store, self.data, self.run_id, self.pet = db, store, data, run_id, pet
        self.generator, self.base = generator, generator.base
        self.params, self.photos, self.hooks, self.scorer, self.loop = params, photos, hooks, scorer, loop
        self.compile_ahead = compile_ahead
        self.subject = Subject(photos)  # the pet's photos: their embeddings are computed once per run
        self._step = 0
        self.trainer: LoraTrainer | None = None
        self.stop = False
        self.prompts = validation_prompts(pet, params.validation_prompts)
        self.checkpoint_ids: dict[int, int] = {}
        self.latest_key: str | None = None
        self.plan: LoopPlan | None = None  # decided when the run starts in the training thread
        # Work handed to the event loop without waiting: validation rounds being stored, progress written.
        self.loop_work: list[Future] = []
        self.validate_first = True  # the run's first round before its first step (see execute_run)
        # Keys written by this execution carry this tag: a retry elsewhere never overwrites them.
        self.tag = keys.new_tag()

    def run(self, resume_from: tuple[int, dict, str, int] | None, class_paths: list[Path]) -> int:
        params, base = self.params, self.base
        restore_encoders(base)
        plan = plan_memory(params, base, *memory_for_training(base))
        log.info(
            "run %d: %s mode (%s), gradient checkpointing %s, %d of the step's %d images per pass",
            self.run_id, plan.mode, plan.reason, "on" if plan.gradient_checkpointing else "off", plan.micro_batch,
            params.unet_images_per_step,
        )
        cache = build_cache(
            base,
            self.photos,
            self.pet.instance_prompt,
            params.resolution,
            flip=params.flip,
            class_paths=class_paths,
            class_prompt=class_prompt(self.pet.class_noun),
            validation_prompts=self.prompts,
            encode_batch=4 if plan.mode == "fast" else 1,  # a 1024² VAE encode of 4 needs ~5 GiB more
        )
        self.plan = plan
        self.cache = cache
        compiled = None
        if params.compile and self.compile_ahead is not None:
            compiled = self.compile_ahead.compiled_for(params, plan)
            if compiled is None:
                log.info("run %d: its plan is not compiled yet (the worker compiles it when idle); training uncompiled",
                         self.run_id)
        trainer = LoraTrainer(base, params, cache, plan, compiled)
        trainer.completed_steps = self._step
        self.trainer = trainer
        try:
            if plan.offload_encoders:
                offload_encoders(base)
            start = 0
            if resume_from is not None:
                start = trainer.load_state_dict(resume_from[1])
                self.latest_key = resume_from[2]
                log.info("run %d: resuming from step %d", self.run_id, start)
            callbacks = LoopCallbacks(
                save_checkpoint=self.save_checkpoint,
                validate=self.validate,
                on_progress=self.progress,
                should_cancel=self.should_cancel,
                between_steps=self.between_steps if self.hooks.between_steps else None,
            )
            last = run_loop(trainer, start, callbacks, self.validate_first)
            self.loop_work_done()
            return last
        finally:
            self.settle_loop_work()
            self.generator.release_graphs()  # a round's graph, kept between the rounds in fast mode
            trainer.close()
            restore_encoders(base)
            if base.device.type == "cuda":
                torch.cuda.empty_cache()

    @property
    def step(self) -> int:
        """Completed optimizer steps (what a failure or cancellation reports)."""
        return self.trainer.completed_steps if self.trainer is not None else self._step

    @step.setter
    def step(self, value: int) -> None:
        self._step = value

    def between_steps(self, make_room: Callable[[], None]) -> bool:
        """The caller's hook (e.g. a generation on the same pipe), then the lean mode's memory layout
        again; whether the hook used the GPU (it makes room first).

        A generation served here moves the text encoders back to the GPU (the Generator does);
        in lean mode they go back to the CPU afterwards.
        """
        assert self.hooks.between_steps is not None
        used: list[bool] = []

        def room_first() -> None:
            used.append(True)
            make_room()

        self.hooks.between_steps(room_first)
        if used and self.plan.offload_encoders:
            offload_encoders(self.base)
        return bool(used)

    def should_cancel(self) -> bool:
        return self.stop or bool(self.hooks.should_cancel and self.hooks.should_cancel())

    async def should_cancel_now(self) -> bool:
        """should_cancel on the event loop (class images ask there): the hook answers from memory."""
        return self.should_cancel()

    def loop_work_done(self, wait: bool = True) -> None:
        """Raise the first failure of the work handed to the loop, waiting for all of it (or, without
        `wait`, looking only at what is done)."""
        for future in list(self.loop_work):
            if wait or future.done():
                self.loop_work.remove(future)
                future.result()

    def settle_loop_work(self) -> None:
        """Wait for all work still on the loop (a run ending on a failure or a cancellation too:
        its pictures are not lost); failures are logged, the run's own outcome stands."""
        for future in self.loop_work:
            try:
                future.result()
            except Exception:
                log.exception("run %d: storing a validation round or progress failed", self.run_id)
        self.loop_work.clear()

    def progress(self, info: ProgressInfo) -> None:
        self.loop_work_done(wait=False)
        self.loop_work.append(hop(self.loop, self.record_progress, info))

    async def record_progress(self, info: ProgressInfo) -> None:
        await runs.set_step(self.db, self.run_id, info.step)
        if self.hooks.on_progress:
            await called(self.hooks.on_progress, info)

    def _staging(self, what: str) -> Path:
        return self.data.tmp_dir() / f"{what}-{uuid.uuid4().hex}"

    def save_checkpoint(self, step: int) -> None:
        self.loop_work_done()  # the rounds' rows name checkpoints that pruning may delete
        params, trainer = self.params, self.trainer
        lora = trainer.lora_state_dict()
        folder = self._staging(f"run{self.run_id}-step{step}")
        try:
            files = write_checkpoint(
                folder,
                lora,
                trainer.lora_config.to_dict(),
                rank=params.rank,
                alpha=params.lora_alpha,
                kohya_name=f"pawtrait-{self.pet.token}-run{self.run_id}-step{step}",
                state=trainer.state_dict(step, lora),
            )
            hop(self.loop, self.record_checkpoint, step, folder, files).result()
        finally:
            remove_tree(folder)

    async def record_checkpoint(self, step: int, folder: Path, files: CheckpointFiles) -> None:
        """Publish a written checkpoint and record it: one trip from the training thread (six waits
        before, issue 26)."""
        key = keys.checkpoint(self.run_id, step, self.tag)
        await self.store.put_tree(key, folder, move=True)
        checkpoint_id = await runs.add_checkpoint(
            self.db, self.run_id, step, key, f"{key}/{files.diffusers_file.name}", f"{key}/{files.kohya_file.name}",
        )
        if self.latest_key is not None and self.latest_key != key:
            await self.store.delete([state_key(self.latest_key)])  # only the newest resumes
        self.latest_key = key
        self.checkpoint_ids[step] = checkpoint_id
        await runs.set_step(self.db, self.run_id, step)
        if self.params.keep_checkpoints:
            await prune_checkpoints(self.db, self.store, self.run_id, self.params.keep_checkpoints)
        if self.hooks.on_checkpoint:
            await called(self.hooks.on_checkpoint, step, checkpoint_id)

    def validate(self, step: int) -> None:
        params, cache = self.params, self.cache
        assert cache.validation is not None and cache.validation_negative is not None
        seeds = [params.validation_seed + index for index in range(len(self.prompts))]
        job = Render(cache.validation, cache.validation_negative, seeds, params.resolution,
                     self.plan.render_batch(len(self.prompts)))
        # Fast mode keeps the round's graph for the next round (its memory is in the plan's headroom);
        # lean mode gives it back to the training.
        pictures = self.generator.render(job, adapter=TRAINING_ADAPTER, blocks=self.trainer.compiled,
                                         keep_graphs=self.plan.mode == "fast")
        scores = self.score(step, pictures)
        self.loop_work.append(hop(self.loop, self.store_round, step, self.checkpoint_ids.get(step), pictures, seeds, scores))

    async def store_round(
        self, step: int, checkpoint_id: int | None, pictures: list[Image.Image], seeds: list[int],
        scores: list[ImageScores | None],
    ) -> None:
        """Encode a round's pictures (in threads: PNG encoding releases the GIL), store and record
        them, then tell the caller's hook."""
        paths = [self._staging(f"run{self.run_id}-validation").with_suffix(".png") for _ in pictures]
        try:
            await asyncio.gather(*(asyncio.to_thread(picture.save, path, format="PNG")
                                   for picture, path in zip(pictures, paths)))
            for index, (path, prompt, seed, measured) in enumerate(zip(paths, self.prompts, seeds, scores)):
                key = keys.validation_image(self.run_id, step, index, self.tag)
                await self.store.put_file(key, path, move=True)
                await runs.add_validation_image(self.db, self.run_id, step, checkpoint_id, prompt, seed, key, measured)
        finally:
            for path in paths:
                path.unlink(missing_ok=True)
        rows = await runs.list_validation_images(self.db, self.run_id, step)
        if self.hooks.on_validation:
            await called(self.hooks.on_validation, step, rows)

    def score(self, step: int, pictures: list[Image.Image]) -> list[ImageScores | None]:
        """This round's scores on the training's device; None for each picture without a scorer or
        models, or when scoring failed."""
        unscored: list[ImageScores | None] = [None] * len(pictures)
        if self.scorer is None:
            return unscored
        texts = [without_token(prompt, self.pet.token, self.pet.class_noun) for prompt in self.prompts]
        try:
            scores = self.scorer.score(self.subject, pictures, texts, self.base.device)
        except Exception:
            log.exception("run %d: scoring the validation pictures of step %d failed; they stay unscored", self.run_id, step)
            return unscored
        return unscored if scores is None else list(scores)
