"""Queueing work for the GPU workers: what every front end (the bot, the CLI) calls.

Each function checks what a member can get wrong and raises an error whose text a member
can read as it is (a full sentence), then queues the job through its kind's contract
(engine.usecases.jobs). Torch-free: the bot imports it.
"""

from __future__ import annotations

from dataclasses import replace

from config.settings import Settings
from engine.usecases.generation.checkpoint_choice import checkpoint_to_paint
from engine.usecases.generation.request import GenerationRequest
from engine.usecases.jobs.generate import GENERATE, GeneratePayload
from engine.usecases.jobs.train import TRAIN, TrainPayload
from engine.usecases.moderation.prompts import PromptRefused, screen_prompt
from engine.usecases.training.create import create_run
from engine.usecases.training.params import TrainingInputError, TrainingParams
from storage import jobs, runs
from storage.db import Queries
from storage.files import FileStore
from storage.moderation import list_block_words
from storage.pets import Pet


async def queue_training(
    db: Queries,
    store: FileStore,
    settings: Settings,
    pet: Pet,
    params: TrainingParams,
    user_id: str,
    *,
    resume_run_id: int | None = None,
    also: jobs.WithJob | None = None,
) -> jobs.Job:
    """Create the pet's run (or continue `resume_run_id`) and queue it, with `also` (storage.jobs.submit_job).

    Raises TrainingInputError (the pet, its photos or the parameters) or QueueLimitReached;
    a run that could not be queued (refused by the queue, or any error) is cancelled, never left
    waiting: a waiting run with no job would keep the pet "already training" for good.
    """
    if resume_run_id is None:
        if any(run.status in ("queued", "running") for run in await runs.list_runs(db, pet.id)):
            raise TrainingInputError(f"{pet.name} is already training or waiting to train.")
        run_id = await create_run(db, store, pet, params)
    else:
        run_id = resume_run_id
    try:
        return await TRAIN.submit(
            db, settings, pet.guild_id, user_id, TrainPayload(pet.id, run_id), run_id=run_id, also=also
        )
    except Exception as error:
        run = await runs.get_run(db, run_id)
        if run is not None and run.status == "queued":
            await runs.finish_run(db, run_id, "cancelled", run.step, f"not queued: {error}")
        raise


async def queue_generation(
    db: Queries,
    settings: Settings,
    request: GenerationRequest,
    pet: Pet | None,
    guild_id: str,
    user_id: str,
    *,
    also: jobs.WithJob | None = None,
) -> jobs.Job:
    """Check the request (its prompt, and that its pet has a finished training; its values were
    checked when it was made) and queue it, with the checkpoint it paints with: the one asked
    for, else the pet's current one, and with `also` (storage.jobs.submit_job).

    Raises GenerationError (PromptRefused for a screened prompt) or QueueLimitReached.
    """
    await check_prompt(db, request, guild_id)
    if pet is not None:
        checkpoint = await checkpoint_to_paint(db, pet, request.checkpoint_id)
        request = replace(request, pet_id=pet.id, checkpoint_id=checkpoint.id)
    return await GENERATE.submit(db, settings, guild_id, user_id, GeneratePayload(request), also=also)


async def check_prompt(db: Queries, request: GenerationRequest, guild_id: str) -> None:
    """Screen the prompt with the built-in lists and the server's own words; raises PromptRefused.

    The negative prompt is not screened: it lists what to keep out of a picture, and
    "nsfw, nude" there is the usual way to keep a picture clean.
    """
    await check_prompt_for(db, request.prompt, guild_id, age_restricted=request.age_restricted)


async def check_prompt_for(db: Queries, prompt: str, guild_id: str, *, age_restricted: bool) -> None:
    """Screen `prompt` for a channel that is age-restricted or not, with the server's words as they
    are now (pictures posted again elsewhere, such as a gallery share); raises PromptRefused."""
    verdict = screen_prompt(prompt, age_restricted=age_restricted, server_words=await list_block_words(db, guild_id))
    if not verdict.allowed:
        raise PromptRefused(verdict)
