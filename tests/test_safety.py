"""Moderation on the worker: pictures screened before anyone sees them, photos of people refused.

A tiny safety checker built from the real diffusers class flags exactly the pictures whose own
embeddings the test made its concepts; a tiny CLIP whose projection the test solves for makes
exactly one photo "a person". Everything runs through the real worker code (Executor, JobReporter).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
import torch
from people_helpers import person_clip
from PIL import Image

from config.settings import Settings
from engine.gpu.generation.generator import Generator
from engine.gpu.generation.service import generate_and_record
from engine.gpu.models import BaseModel
from engine.gpu.safety.checker import load_safety_checker
from engine.gpu.safety.people import NOT_PERSON, PeopleInPhotos, refuse_people
from engine.gpu.safety.screening import Screening, ScreeningUnavailable
from engine.gpu.safety.tiny import make_safety_checker
from engine.gpu.scoring.scorer import Scorer
from engine.gpu.worker.events import LoopBridge
from engine.gpu.worker.executor import Executor, JobReporter
from engine.usecases.generation.request import GenerationRequest
from engine.usecases.jobs.contract import to_json
from storage import jobs, runs
from storage.files import DataDir, FileStore
from storage.generations import get_generation
from storage.pets import LOCAL_GUILD
from storage.photos import list_photos

from cli_helpers import pawtrait
from training_helpers import pet_with_photos
from worker_helpers import painting, submit_training, tiny_training

CPU = torch.device("cpu")


def flagging(folder: Path, pictures: list[Image.Image]) -> Screening:
    """Screening by a tiny checker whose concepts are these pictures' own embeddings."""
    plain = load_safety_checker(str(make_safety_checker(folder / "plain")))
    return Screening(True, str(make_safety_checker(folder / "flags", flag=plain.embeddings(pictures))), CPU)


def noise(seed: int, side: int = 64) -> Image.Image:
    return Image.effect_noise((side, side), 40 + seed).convert("RGB").rotate(seed * 37)


def test_the_checker_flags_exactly_the_picture_its_concept_was_made_from(tmp_path: Path) -> None:
    pictures = [noise(seed) for seed in range(4)] + [Image.new("RGB", (1024, 1024), (200, 120, 40))]
    screening = flagging(tmp_path, [pictures[2]])
    assert screening.flags(pictures) == [False, False, True, False, False]
    assert screening.flags([]) == []


def test_missing_weights_refuse_in_plain_words_and_off_screens_nothing(tmp_path: Path) -> None:
    missing = Screening(True, str(tmp_path / "no-such-folder"), CPU)
    with pytest.raises(ScreeningUnavailable, match="cannot check pictures before they are posted.*PAWTRAIT_SAFETY_MODEL"):
        missing.require()
    off = Screening(False, str(tmp_path / "no-such-folder"), CPU)
    off.require()  # the operator's explicit choice
    assert off.flags([noise(1)]) is None
    assert Settings.from_env({"PAWTRAIT_SAFETY": "off"}).safety is False
    assert Settings.from_env({}).safety is True


async def test_a_painting_carries_its_verdicts_in_its_row_and_result(
    db, store: FileStore, settings: Settings, generator: Generator, tmp_path: Path
) -> None:
    data = DataDir(settings.data_dir)
    request = dict(prompt="a photo of a cat", seed=7, steps=1, count=2)
    first = await generate_and_record(db, store, data, generator, GenerationRequest(**request), LOCAL_GUILD, "u")
    second_picture = Image.open(await store.local_path(first.files[1])).convert("RGB")
    screening = flagging(tmp_path, [second_picture])

    again = await generate_and_record(db, store, data, generator, GenerationRequest(**request), LOCAL_GUILD, "u",
                                      screen=screening.flags)
    assert again.flagged == [False, True] and to_json(again.to_result())["flagged"] == [False, True]
    row = await get_generation(db, again.generation_id)
    assert row.flagged == [False, True] and row.is_flagged(1) and not row.is_flagged(0)
    assert first.flagged is None and not (await get_generation(db, first.generation_id)).is_flagged(1)


async def test_a_flagged_preview_is_never_published_and_stops_the_previews(
    db, store: FileStore, settings: Settings, tmp_path: Path
) -> None:
    previews = [noise(1), noise(2), noise(3)]
    await jobs.submit_job(db, settings, "generate", LOCAL_GUILD, "carol", painting())
    job = await jobs.claim_next_job(db, "worker-test")
    bridge = LoopBridge(asyncio.get_running_loop())
    reporter = JobReporter(db, store, job, bridge, flagging(tmp_path, [previews[1]]))
    for step, preview in enumerate(previews, start=1):
        reporter._preview._last = float("-inf")  # as if a second had passed
        await asyncio.to_thread(reporter.generation_step, step, 10, lambda preview=preview: preview, lambda: False)
    await bridge.flush()
    shown = [event.data["step"] for event in await jobs.events_after(db, jobs.START, [job.id]) if event.kind == "preview"]
    assert shown == [1]  # the second was flagged, and the third (the same picture, sharper) is not shown either


def executor(settings: Settings, db, store: FileStore, base: BaseModel, **changes: object) -> Executor:
    settings = dataclasses.replace(settings, compile=False, compile_training=False, **changes)
    return Executor(settings, db, store, DataDir(settings.data_dir), base, "worker-test")


async def test_a_worker_that_cannot_screen_refuses_to_paint_and_to_train(db, store: FileStore, settings: Settings,
                                                                          base: BaseModel, tmp_path: Path) -> None:
    worker = executor(settings, db, store, base, safety_model=str(tmp_path / "missing"))
    await jobs.submit_job(db, settings, "generate", LOCAL_GUILD, "carol", painting())
    painted = await worker.run(await jobs.claim_next_job(db, "worker-test"))
    assert painted.status == "failed" and "cannot check pictures before they are posted" in painted.error
    assert str(tmp_path) not in painted.error  # the member reads it: the model's path is in the log only
    _, run_id, _ = await submit_training(db, store, settings, tiny_training(2, 2), "carol", "Mochi")
    trained = await worker.run(await jobs.claim_next_job(db, "worker-test"))
    assert trained.status == "failed" and "PAWTRAIT_SAFETY_MODEL" in trained.error
    assert (await runs.get_run(db, run_id)).status == "failed"  # not left waiting: /train works again later

    unscreened = executor(settings, db, store, base, safety=False, safety_model=str(tmp_path / "missing"))
    await jobs.submit_job(db, settings, "generate", LOCAL_GUILD, "carol", painting())
    done = await unscreened.run(await jobs.claim_next_job(db, "worker-test"))
    assert done.status == "succeeded" and done.result["flagged"] is None


async def test_a_validation_round_is_screened_recorded_and_announced_with_its_verdicts(
    db, store: FileStore, settings: Settings, tmp_path: Path
) -> None:
    pet, run_id, _ = await submit_training(db, store, settings, tiny_training(2, 2), "carol", "Mochi")
    job = await jobs.claim_next_job(db, "worker-test")
    pictures = [noise(seed) for seed in (4, 5)]
    for index, picture in enumerate(pictures):
        key = f"runs/{run_id}/validation-{index}.png"
        path = tmp_path / f"{index}.png"
        picture.save(path)
        await store.put_file(key, path)
        await runs.add_validation_image(db, run_id, 2, None, "a photo of TOK cat", index, key)
    bridge = LoopBridge(asyncio.get_running_loop())
    reporter = JobReporter(db, store, job, bridge, flagging(tmp_path, [pictures[0]]))
    reporter.validation(2, await runs.list_validation_images(db, run_id, 2))
    await bridge.flush()
    [event] = [event for event in await jobs.events_after(db, jobs.START, [job.id]) if event.kind == "validation"]
    assert [image["flagged"] for image in event.data["images"]] == [True, False]
    assert [image.flagged for image in await runs.list_validation_images(db, run_id, 2)] == [True, False]


# --- pets, not people ---------------------------------------------------------------------------


async def test_a_photo_of_a_person_stops_the_training_and_is_named(
    db, store: FileStore, settings: Settings, base: BaseModel, scoring_models: tuple[Path, Path], tmp_path: Path
) -> None:
    pet, run_id, _ = await submit_training(db, store, settings, tiny_training(2, 2), "carol", "Mochi")
    photos = [Image.open(await store.local_path(photo.prepared_path)).convert("RGB")
              for photo in await list_photos(db, pet.id)]
    dino, _ = scoring_models
    people = person_clip(scoring_models, tmp_path / "clip", photos, person=1, class_noun="cat")
    with pytest.raises(PeopleInPhotos) as refused:
        await refuse_people(db, store, pet, Scorer(str(dino), str(people)), CPU)
    assert "`1.png`: its subject looks like a person, not a cat" in str(refused.value)
    assert "`0.png`" not in str(refused.value) and "`/teach` it again without these photos" in str(refused.value)

    worker = executor(settings, db, store, base, score_clip=str(people))
    job = await worker.run(await jobs.claim_next_job(db, "worker-test"))
    assert job.status == "failed" and "pets, not people" in job.error and "`1.png`" in job.error
    run = await runs.get_run(db, run_id)
    assert (run.status, run.step) == ("failed", 0) and not await runs.list_checkpoints(db, run_id)


async def test_photos_of_animals_and_things_train(db, store: FileStore, settings: Settings, scoring_models,
                                                  tmp_path: Path) -> None:
    pet = await pet_with_photos(db, store, name="Plushie", class_noun="toy")
    photos = [Image.open(await store.local_path(photo.prepared_path)).convert("RGB")
              for photo in await list_photos(db, pet.id)]
    dino, _ = scoring_models
    things = person_clip(scoring_models, tmp_path / "clip", photos, person=-1, class_noun="toy")
    await refuse_people(db, store, pet, Scorer(str(dino), str(things)), CPU)  # nothing raised
    assert "a photo of a stuffed toy" in NOT_PERSON


def test_doctor_lists_the_safety_model_and_says_when_screening_is_off(env: dict[str, str], tmp_path: Path) -> None:
    shown = pawtrait("doctor", "--for", "worker", env=env, cwd=tmp_path)
    assert f"picture safety: {env['PAWTRAIT_SAFETY_MODEL']} - local folder" in shown.stdout
    off = pawtrait("doctor", "--for", "worker", env=dict(env, PAWTRAIT_SAFETY="off"), cwd=tmp_path)
    assert "picture safety: OFF (PAWTRAIT_SAFETY=off)" in off.stdout and "posted unscreened" in off.stdout
