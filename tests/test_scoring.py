"""Checkpoint scores: the scorer on tiny random DINO/CLIP models, scores stored per checkpoint through real
trainings (and their worker events), the suggestion rule on typical score tables, and `pawtrait eval`."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from config.settings import DEFAULT_SCORE_CLIP, DEFAULT_SCORE_DINO, Settings, SettingsError
from engine.gpu.generation.generator import Generator
from engine.gpu.scoring.scorer import Scorer, Subject
from engine.gpu.training.service import execute_run
from engine.gpu.worker.events import LoopBridge
from engine.gpu.worker.executor import JobReporter
from engine.usecases.scoring.choice import choose_checkpoint
from engine.usecases.scoring.prompts import without_token
from engine.usecases.scoring.suggest import RULE, TOLERANCE, break_tie, suggest
from engine.usecases.training import TrainingHooks, TrainingParams, create_run
from storage import jobs, keys, runs
from storage.files import DataDir, FileStore
from storage.pets import LOCAL_GUILD, create_pet, get_pet
from storage.scores import ImageScores, StepScores, run_scores

from cli_helpers import pawtrait
from training_helpers import pet_with_photos

CPU = torch.device("cpu")
QUICK = dict(resolution=64, gradient_accumulation=1, learning_rate=1e-2)


def picture(seed: int, side: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def scorer(scoring_models: tuple[Path, Path]) -> Scorer:
    """One scorer for the module, as one worker keeps one."""
    dino, clip = scoring_models
    return Scorer(str(dino), str(clip))


# --- the scorer -------------------------------------------------------------------------------


def test_a_picture_scores_one_against_itself_and_photos_are_embedded_once(scorer: Scorer) -> None:
    photo = picture(1)
    subject = Subject([photo])
    [same] = scorer.score(subject, [photo], ["a photo of cat"], CPU)
    assert same.dino == pytest.approx(1.0, abs=1e-5) and same.clip_i == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= same.clip_t <= 1.0
    embedded = subject.dino
    other = scorer.score(subject, [picture(2), picture(3)], ["a cat", "a dog on the moon"], CPU)
    assert subject.dino is embedded and len(other) == 2
    assert all(score.dino < 1.0 - 1e-4 and score.clip_i < 1.0 - 1e-4 for score in other)
    # The models went back to the CPU after each round.
    assert scorer.models().device.type == "cpu"


def test_clip_t_compares_with_the_prompt_without_the_trigger_token() -> None:
    assert without_token("a photo of qzxvk cat", "qzxvk", "cat") == "a photo of cat"
    assert without_token("qzxvk asleep on a sofa", "qzxvk", "cat") == "cat asleep on a sofa"
    assert without_token("a red sks backpack", "sks", "backpack") == "a red backpack"
    assert without_token("a painting of a dog", "qzxvk", "cat") == "a painting of a dog"


def test_models_that_cannot_be_loaded_warn_once_and_give_no_scores(
    tmp_path: Path, scoring_models: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    for dino in (str(tmp_path / "missing"), str(not_a_model)):
        broken = Scorer(dino, str(scoring_models[1]))
        with caplog.at_level(logging.WARNING, logger="engine.gpu.scoring.scorer"):
            caplog.clear()
            assert broken.score(Subject([picture(1)]), [picture(1)], ["a cat"], CPU) is None
            assert broken.score(Subject([picture(1)]), [picture(1)], ["a cat"], CPU) is None
        [warning] = caplog.records
        assert "checkpoint scores are off" in warning.getMessage() and "PAWTRAIT_SCORES=off" in warning.getMessage()


def test_scoring_settings_default_to_the_papers_models_and_reject_bad_values(tmp_path: Path) -> None:
    defaults = Settings.from_env({})
    assert (defaults.scores, defaults.score_dino, defaults.score_clip) == (True, DEFAULT_SCORE_DINO, DEFAULT_SCORE_CLIP)
    assert Scorer.from_settings(Settings.from_env({"PAWTRAIT_SCORES": "off"})) is None
    # The people check and `pawtrait eval --dreambench` score even so.
    assert Scorer.from_settings(Settings.from_env({"PAWTRAIT_SCORES": "off"}), always=True) is not None
    chosen = Settings.from_env({"PAWTRAIT_SCORE_DINO": str(tmp_path), "PAWTRAIT_SCORE_CLIP": "~/models/clip"})
    assert (chosen.score_dino, chosen.score_clip) == (str(tmp_path), "~/models/clip")
    assert Scorer.from_settings(chosen).dino_source == str(tmp_path)
    for name, value in (("PAWTRAIT_SCORES", "maybe"), ("PAWTRAIT_SCORE_DINO", "https://huggingface.co/facebook/dino"),
                        ("PAWTRAIT_SCORE_CLIP", "two words")):
        with pytest.raises(SettingsError) as error:
            Settings.from_env({name: value})
        message = str(error.value)
        assert message.startswith(f"{name}={value!r} is not valid") and "\n" not in message


# --- the suggestion rule -------------------------------------------------------------------------


def table(dino: list[float], clip_t: list[float], every: int = 100) -> list[StepScores]:
    return [
        StepScores(step=every * (index + 1), checkpoint_id=index + 1, dino=d, clip_i=d + 0.2, clip_t=t, scored=3)
        for index, (d, t) in enumerate(zip(dino, clip_t))
    ]


UNTRAINED = StepScores(step=0, checkpoint_id=None, dino=0.30, clip_i=0.60, clip_t=0.30, scored=3)


@pytest.mark.parametrize(
    ("shape", "steps", "expected"),
    [
        # Fidelity still rising, adherence flat: train on; the last step is the best so far.
        ("under-trained", table([0.35, 0.45, 0.55, 0.62], [0.30, 0.31, 0.30, 0.30]), 400),
        # Fidelity plateaus: the plateau's first step (the same likeness with less training).
        ("good", table([0.45, 0.60, 0.641, 0.638, 0.642], [0.30, 0.30, 0.29, 0.30, 0.29]), 300),
        # Adherence collapses late while fidelity keeps rising toward the photos: the last step before.
        ("overfit", table([0.45, 0.58, 0.64, 0.70, 0.74], [0.31, 0.30, 0.29, 0.25, 0.21]), 300),
    ],
)
def test_the_rule_picks_the_most_faithful_checkpoint_that_still_follows_prompts(
    shape: str, steps: list[StepScores], expected: int
) -> None:
    suggestion = suggest(steps, UNTRAINED, "Mochi")
    assert suggestion.step == expected, shape
    assert suggestion.checkpoint_id == expected // 100
    chosen = next(step for step in steps if step.step == expected)
    assert suggestion.reason == (
        f"step {expected} looks most like Mochi (likeness {chosen.dino:.2f}) while still following prompts "
        f"({chosen.clip_t:.2f}, the untrained model 0.30)"
    )


def test_without_a_checkpoint_that_follows_prompts_the_one_that_follows_them_best() -> None:
    steps = table([0.50, 0.60, 0.70], [0.25, 0.27, 0.22])
    suggestion = suggest(steps, UNTRAINED, "Mochi")
    assert suggestion.step == 200
    assert suggestion.reason == (
        "every checkpoint follows prompts less well than the untrained model (0.30); "
        "step 200 follows them best (0.27, likeness 0.60)"
    )
    # Just inside the tolerance still counts as following prompts.
    assert suggest(table([0.5, 0.6], [0.30, 0.30 - TOLERANCE]), UNTRAINED).step == 200


def test_without_scores_there_is_no_suggestion_and_without_a_reference_the_best_checkpoint_stands_in() -> None:
    unscored = [StepScores(step=100, checkpoint_id=1, dino=None, clip_i=None, clip_t=None, scored=0)]
    assert suggest([], UNTRAINED) is None
    assert suggest(unscored, None) is None
    assert break_tie([100], unscored, None) is None
    steps = table([0.45, 0.58, 0.64, 0.70], [0.31, 0.31, 0.30, 0.24])
    suggestion = suggest(steps + unscored, None, "Mochi")
    assert suggestion.step == 300 and suggestion.reason.endswith("(0.30, the best 0.31)")


def test_vote_ties_go_to_the_step_the_rule_prefers() -> None:
    steps = table([0.45, 0.58, 0.64, 0.70, 0.74], [0.31, 0.30, 0.29, 0.25, 0.21])
    assert break_tie([200, 500], steps, UNTRAINED) == 200
    assert break_tie([400, 500], steps, UNTRAINED) == 400  # neither follows prompts: the better of the two
    assert break_tie([100, 300], steps, UNTRAINED) == 300


# --- stored scores --------------------------------------------------------------------------------


@pytest.mark.both_modes
async def test_scores_are_stored_per_picture_and_averaged_per_checkpoint(db) -> None:
    owner = await create_pet(db, LOCAL_GUILD, "owner", "Mochi", "cat")
    run_id = await runs.insert_run(db, owner.id, {}, 200)
    first = await runs.add_checkpoint(db, run_id, 100, "c100", "c100/a.safetensors", "c100/b.safetensors")
    second = await runs.add_checkpoint(db, run_id, 200, "c200", "c200/a.safetensors", "c200/b.safetensors")
    for step, checkpoint_id, values in (
        (0, None, [(0.2, 0.5, 0.30), (0.4, 0.7, 0.32)]),
        (50, None, [(0.9, 0.9, 0.9)]),  # validated without a checkpoint: nobody can pick it
        (100, first, [(0.5, 0.75, 0.29), (0.7, 0.85, 0.27)]),
    ):
        for index, (dino, clip_i, clip_t) in enumerate(values):
            await runs.add_validation_image(
                db, run_id, step, checkpoint_id, "a photo of TOK cat", index, f"v/{step}-{index}.png",
                ImageScores(dino, clip_i, clip_t),
            )
    await runs.add_validation_image(db, run_id, 200, second, "a photo of TOK cat", 0, "v/200-0.png")  # unscored
    [image] = await runs.list_validation_images(db, run_id, 200)
    assert (image.dino, image.clip_i, image.clip_t, image.scores) == (None, None, None, None)
    assert (await runs.list_validation_images(db, run_id, 100))[0].scores == ImageScores(0.5, 0.75, 0.29)

    scores = await run_scores(db, run_id)
    assert scores.reference == StepScores(0, None, pytest.approx(0.3), pytest.approx(0.6), pytest.approx(0.31), 2)
    step, unscored = scores.steps
    assert (step.step, step.checkpoint_id, step.scored, step.has_scores) == (100, first, 2, True)
    assert (step.dino, step.clip_i, step.clip_t) == (pytest.approx(0.6), pytest.approx(0.8), pytest.approx(0.28))
    assert unscored == StepScores(200, second, None, None, None, 0)


async def scored_run(db, dino: list[float], clip_t: list[float], guild: str = "g1") -> tuple[int, int, dict[int, int]]:
    """(pet id, run id, validation image id per step) of a run with one scored picture per step."""
    pet = await create_pet(db, guild, "owner", "Mochi", "cat")
    run_id = await runs.insert_run(db, pet.id, {}, 100 * len(dino))
    image_ids = {0: await runs.add_validation_image(db, run_id, 0, None, "p", 0, "v0", ImageScores(0.3, 0.6, 0.30))}
    for index, (likeness, adherence) in enumerate(zip(dino, clip_t)):
        step = 100 * (index + 1)
        checkpoint_id = await runs.add_checkpoint(db, run_id, step, f"c{step}", "a", "b")
        image_ids[step] = await runs.add_validation_image(
            db, run_id, step, checkpoint_id, "p", 0, f"v{step}", ImageScores(likeness, likeness + 0.2, adherence)
        )
    return pet.id, run_id, image_ids


async def test_with_no_votes_the_suggestion_is_kept_a_vote_overrides_it_and_scores_break_ties(db) -> None:
    async def kept_with(guild: str, votes: list[tuple[str, str, int]]):
        """The checkpoint kept when a training ends with these (member, emoji, step) votes."""
        pet_id, run_id, image = await scored_run(
            db, [0.45, 0.58, 0.64, 0.70, 0.74], [0.31, 0.30, 0.29, 0.25, 0.21], guild=guild
        )
        for user, emoji, step in votes:
            await runs.add_vote(db, user, emoji, validation_image_id=image[step])
        kept = await choose_checkpoint(db, run_id, await get_pet(db, pet_id))
        assert (await get_pet(db, pet_id)).active_checkpoint_id == kept.checkpoint.id
        return kept

    kept = await kept_with("g1", [])
    assert kept.checkpoint.step == 300 and kept.voted_step is None
    assert kept.reason.startswith("nobody voted, so I kept the suggested checkpoint: step 300 looks most like Mochi")

    one_vote = [("bob", "⭐", 500), ("eve", "👍", 400)]  # a thumbs-up is not this server's vote emoji
    kept = await kept_with("g2", one_vote)
    assert (kept.checkpoint.step, kept.voted_step, kept.reason) == (500, 500, "step 500 got the most votes (1 vote)")
    assert kept.suggestion.step == 300  # still shown beside the vote

    # The owner's vote does not beat the score.
    kept = await kept_with("g3", [*one_vote, ("owner", "⭐", 400), ("carol", "⭐", 200)])
    assert kept.checkpoint.step == 200 and kept.reason == "steps 200, 400, 500 tied with 1 vote; step 200 scores best"


# --- scores through a real training ------------------------------------------------------------------


async def test_every_validation_round_is_scored_stored_announced_and_scored_again_after_a_resume(
    db, store: FileStore, data: DataDir, generator: Generator, scorer: Scorer, settings: Settings
) -> None:
    pet = await pet_with_photos(db, store, name="Mochi")
    run_id = await create_run(db, store, pet, TrainingParams(steps=4, checkpoint_every=2, validate_every=2, **QUICK))
    await jobs.submit_job(db, settings, "train", LOCAL_GUILD, "owner", {"run_id": run_id, "pet_id": pet.id}, run_id)
    job = await jobs.claim_next_job(db, "worker-test")
    bridge = LoopBridge(asyncio.get_running_loop())
    reporter = JobReporter(db, store, job, bridge)
    announced: list[tuple[int, list[runs.ValidationImage]]] = []
    boundaries: list[int] = []

    def on_validation(step: int, images: list[runs.ValidationImage]) -> None:
        announced.append((step, images))
        reporter.validation(step, images)  # what the worker does with them

    def cancel_before_step_4() -> bool:
        boundaries.append(len(boundaries))
        return len(boundaries) > 4  # the step-0 validation check, then before steps 1..3

    hooks = TrainingHooks(on_validation=on_validation, should_cancel=cancel_before_step_4)
    first = await execute_run(db, store, data, generator, run_id, hooks, scorer=scorer)
    assert (first.status, first.step) == ("cancelled", 3)
    before = {image.id: image for image in await runs.list_validation_images(db, run_id)}
    assert sorted({image.step for image in before.values()}) == [0, 2]
    assert all(image.scores is not None for image in before.values())
    assert [step for step, _ in announced] == [0, 2]
    assert all(image.scores is not None for _, images in announced for image in images)
    # A leftover from a round past the checkpoint (as a worker that died mid-round leaves one) goes.
    await runs.add_validation_image(db, run_id, 3, None, pet.instance_prompt, 1, keys.validation_image(run_id, 3, 0, "x"))

    resumed = await execute_run(db, store, data, generator, run_id, TrainingHooks(on_validation=on_validation), scorer=scorer)
    assert (resumed.status, resumed.step) == ("succeeded", 4)
    images = await runs.list_validation_images(db, run_id)
    assert [image.step for image in images] == [0, 0, 0, 2, 2, 2, 4, 4, 4]
    assert all(image.scores is not None for image in images)
    assert {image.id for image in images if image.step < 4} == set(before)  # kept as they were, scores and all
    scores = await run_scores(db, run_id)
    assert scores.reference.scored == 3 and [(s.step, s.scored) for s in scores.steps] == [(2, 3), (4, 3)]
    suggestion = suggest(scores.steps, scores.reference, pet.name)
    # Nobody voted: the run keeps the suggested checkpoint, and the pet paints with it.
    assert resumed.kept is not None and resumed.kept.checkpoint.step == suggestion.step
    assert "nobody voted, so I kept the suggested checkpoint" in resumed.kept.reason
    assert (await get_pet(db, pet.id)).active_checkpoint_id == resumed.kept.checkpoint.id

    await bridge.flush()
    events = [event for event in await jobs.events_after(db, jobs.START, [job.id]) if event.kind == "validation"]
    assert [event.data["step"] for event in events] == [0, 2, 4]
    by_id = {image.id: image for image in images}
    for event in events:
        for row in event.data["images"]:
            stored = by_id[row["id"]]
            assert (row["dino"], row["clip_i"], row["clip_t"]) == (stored.dino, stored.clip_i, stored.clip_t)


@pytest.mark.parametrize("scoring", ["off", "unloadable"])
async def test_without_scores_a_training_still_succeeds(
    db, store: FileStore, data: DataDir, generator: Generator, tmp_path: Path, scoring: str,
    scoring_models: tuple[Path, Path],
) -> None:
    pet = await pet_with_photos(db, store, count=1)
    run_id = await create_run(db, store, pet, TrainingParams(steps=1, validate_every=0, **QUICK))
    unloadable = Scorer(str(tmp_path / "no-dino-here"), str(scoring_models[1])) if scoring == "unloadable" else None
    outcome = await execute_run(db, store, data, generator, run_id, scorer=unloadable)
    assert outcome.status == "succeeded"
    images = await runs.list_validation_images(db, run_id)
    assert [image.step for image in images] == [0, 0, 0, 1, 1, 1]
    assert all(image.scores is None for image in images)
    scores = await run_scores(db, run_id)
    assert suggest(scores.steps, scores.reference) is None


# --- pawtrait eval ---------------------------------------------------------------------------------


async def test_eval_prints_a_runs_scores_votes_and_the_suggested_and_chosen_steps(
    db, env: dict[str, str], tmp_path: Path
) -> None:
    pet = await create_pet(db, LOCAL_GUILD, "owner", "Mochi", "cat")
    run_id = await runs.insert_run(db, pet.id, {}, 300)
    means = {0: (0.30, 0.60, 0.30), 100: (0.50, 0.75, 0.31), 200: (0.62, 0.81, 0.29), 300: (0.70, 0.86, 0.22)}
    checkpoint_ids = {}
    for step, (dino, clip_i, clip_t) in means.items():
        if step:
            checkpoint_ids[step] = await runs.add_checkpoint(db, run_id, step, f"c{step}", "a.safetensors", "b.safetensors")
        image = await runs.add_validation_image(
            db, run_id, step, checkpoint_ids.get(step), "a photo of TOK cat", 1, f"v{step}.png",
            ImageScores(dino, clip_i, clip_t),
        )
        if step == 100:
            await runs.add_vote(db, "alice", "⭐", validation_image_id=image)
    await runs.add_vote(db, "bob", "⭐", checkpoint_id=checkpoint_ids[300])
    await runs.add_vote(db, "carol", "⭐", checkpoint_id=checkpoint_ids[300])
    await runs.set_chosen_checkpoint(db, run_id, checkpoint_ids[300])

    result = await asyncio.to_thread(pawtrait, "eval", str(run_id), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert lines[1] == ["STEP", "DINO", "CLIP-I", "CLIP-T", "VOTES"]
    assert lines[2:6] == [
        ["0", "0.30", "0.60", "0.30", "-", "untrained"],
        ["100", "0.50", "0.75", "0.31", "1"],
        ["200", "0.62", "0.81", "0.29", "0", "suggested"],
        ["300", "0.70", "0.86", "0.22", "2", "chosen"],
    ]
    assert result.stdout.splitlines()[6] == (
        "suggested: step 200 looks most like Mochi (likeness 0.62) while still following prompts "
        f"(0.29, the untrained model 0.30) ({RULE})"
    )
    assert result.stdout.splitlines()[7] == "chosen: step 300"
    missing = await asyncio.to_thread(pawtrait, "eval", "999", env=env, cwd=tmp_path)
    assert missing.returncode == 2 and "there is no training run 999" in missing.stderr


PROMPTS_AND_CLASSES = """Classes

subject_name,class
mochi,cat
robot,toy

Prompts

Object Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a cube shaped {0} {1}'.format(unique_token, class_token)
]

Live Subject Prompts

prompt_list = [
'a {0} {1} wearing a red hat'.format(unique_token, class_token),
'a wet {0} {1}'.format(unique_token, class_token)
]
"""


async def test_eval_dreambench_paints_and_scores_each_subjects_prompts_with_its_lora(
    db, store: FileStore, data: DataDir, generator: Generator, env: dict[str, str], tmp_path: Path
) -> None:
    pet = await pet_with_photos(db, store, count=1)
    run_id = await create_run(db, store, pet, TrainingParams(steps=1, validate_every=0, **QUICK))
    assert (await execute_run(db, store, data, generator, run_id)).status == "succeeded"
    [checkpoint] = await runs.list_checkpoints(db, run_id)
    lora = await store.local_path(checkpoint.diffusers_key)
    dataset = tmp_path / "dreambooth" / "dataset"  # as the repository has it
    for index, subject in enumerate(("mochi", "robot")):
        (dataset / subject).mkdir(parents=True)
        picture(index, side=96).save(dataset / subject / "00.jpg")
    (dataset / "prompts_and_classes.txt").write_text(PROMPTS_AND_CLASSES, encoding="utf-8")

    result = await asyncio.to_thread(
        pawtrait, "eval", "--dreambench", str(tmp_path / "dreambooth"), "--lora", f"mochi={lora.parent}",
        "--lora", f"robot={lora}", "--images", "1", "--steps", "1", env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SUBJECT", "CLASS", "PICTURES", "DINO", "CLIP-I", "CLIP-T"]
    rows = [line.split() for line in lines[1:4]]
    assert [row[:3] for row in rows] == [["mochi", "cat", "2"], ["robot", "toy", "2"], ["mean", "of", "2"]]
    for row in rows:
        assert all(-1.0 <= float(value) <= 1.0 for value in row[-3:])
    assert lines[4].startswith("the paper (DreamBooth on Stable Diffusion): DINO 0.668, CLIP-I 0.803, CLIP-T 0.305")

    unknown = await asyncio.to_thread(
        pawtrait, "eval", "--dreambench", str(dataset), "--lora", f"cat9={lora}", env=env, cwd=tmp_path
    )
    assert unknown.returncode == 2 and "SUBJECT=PATH" in unknown.stderr


# --- the finish message's chart ----------------------------------------------------------------


def test_the_chart_is_a_picture_of_both_scores_by_step_and_nothing_without_scores() -> None:
    from io import BytesIO

    from engine.usecases.scoring.chart import score_chart
    from storage.scores import RunScores

    steps = table([0.45, 0.58, 0.64, 0.70], [0.31, 0.30, 0.29, 0.24])
    png = score_chart(RunScores(UNTRAINED, steps), suggested=300, voted=400)
    chart = Image.open(BytesIO(png))
    assert chart.format == "PNG" and chart.size == (600, 340)  # small enough for a chat message
    unscored = StepScores(step=100, checkpoint_id=1, dino=None, clip_i=None, clip_t=None, scored=0)
    assert score_chart(RunScores(UNTRAINED, [unscored]), suggested=None, voted=None) is None
    assert score_chart(RunScores(None, []), suggested=None, voted=None) is None
