"""The training engine on the tiny SDXL: runs, checkpoints in both formats, validation, resume, cancel."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from functorch.compile import make_boxed_func
from peft import LoraConfig, set_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file
from torch._dynamo.backends.common import aot_autograd

from config.settings import Settings
from engine.gpu.generation.generator import Generator, PetLora
from engine.gpu.generation.loras import has_tuner_layers
from engine.gpu.generation.renders import Render
from engine.gpu.models import BaseModel, load_base_model
from engine.gpu.training.checkpoints import STATE_FILE, state_key
from engine.gpu.training.class_images import ensure_class_images
from engine.gpu.training.compile_ahead import TrainingCompileAhead, synthetic_cache
from engine.gpu.training.compiled_plans import CompiledPlans
from engine.gpu.training.loop import TRAINING_ADAPTER, LoraTrainer, plan_memory
from engine.gpu.training.service import execute_run
from engine.usecases.generation.request import GenerationRequest
from engine.usecases.training import TrainingHooks, TrainingInputError, TrainingParams, create_run
from storage import keys, runs
from storage.files import DataDir, FileStore
from storage.pets import LOCAL_GUILD, create_pet
from storage.photos import list_photos

from training_helpers import pet_with_photos

# Small and quick: 64 px photos (8x8 latents), 2 images per optimizer step.
QUICK = dict(resolution=64, gradient_accumulation=2, learning_rate=1e-2)
KOHYA_KEY = re.compile(r"^lora_unet_(\w+)\.(lora_down\.weight|lora_up\.weight|alpha)$")


async def stored(store: FileStore, prefix: str) -> set[str]:
    return {item.key for item in await store.list(prefix)}


def unet_output(base: BaseModel) -> torch.Tensor:
    """The UNet's prediction for a fixed input: changes if and only if a LoRA changes the model."""
    unet = base.pipe.unet
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    pooled = torch.randn(1, base.pipe.text_encoder_2.config.projection_dim, generator=generator)
    time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]])
    with torch.no_grad():
        return unet(sample, 500, text, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample


async def test_run_trains_and_records_checkpoints_and_validation(
    db, store: FileStore, data: DataDir, base: BaseModel, generator: Generator) -> None:
    pet = await pet_with_photos(db, store)
    before = unet_output(base)
    params = TrainingParams(steps=4, checkpoint_every=2, validate_every=2, **QUICK)
    run_id = await create_run(db, store, pet, params)
    progress, checkpoints, validations = [], [], []
    hooks = TrainingHooks(
        on_progress=progress.append,
        on_checkpoint=lambda step, checkpoint_id: checkpoints.append((step, checkpoint_id)),
        on_validation=lambda step, images: validations.append((step, images)),
    )

    outcome = await execute_run(db, store, data, generator, run_id, hooks)

    assert (outcome.status, outcome.step, outcome.error) == ("succeeded", 4, None)
    run = await runs.get_run(db, run_id)
    assert (run.status, run.step, run.finished_at is not None) == ("succeeded", 4, True)
    assert TrainingParams.from_dict(run.params) == params
    assert progress and all(torch.isfinite(torch.tensor(info.loss)) for info in progress)
    assert progress[-1].step == 4 and progress[-1].total == 4

    rows = await runs.list_checkpoints(db, run_id)
    assert [(row.step, row.id) for row in rows] == checkpoints == [(2, rows[0].id), (4, rows[1].id)]
    for row in rows:
        assert row.path.startswith(f"runs/{run_id}/checkpoints/step-{row.step}-")
        assert await store.exists(row.diffusers_file) and await store.exists(row.kohya_file)
    # Only the newest checkpoint carries the resume state.
    assert not await store.exists(state_key(rows[0].path))
    assert await store.exists(state_key(rows[1].path)) and STATE_FILE in state_key(rows[1].path)

    images = await runs.list_validation_images(db, run_id)
    assert sorted({image.step for image in images}) == [0, 2, 4]
    assert [step for step, _ in validations] == [0, 2, 4]
    for image in images:
        assert Image.open(await store.local_path(image.path)).size == (64, 64)
    # Everything the run wrote is in the store under the run; nothing is left in local staging.
    checkpoint_files = set().union(*[await stored(store, row.path) for row in rows])
    assert {key.rpartition("/")[2] for key in checkpoint_files} >= {STATE_FILE, "pytorch_lora_weights.safetensors"}
    assert await stored(store, keys.run_prefix(run_id)) == checkpoint_files | {image.path for image in images}
    assert list(data.tmp_dir().iterdir()) == []
    step4 = [image for image in images if image.step == 4]
    assert len(step4) == 3 and step4[0].prompt == pet.instance_prompt
    assert all(image.checkpoint_id == rows[1].id for image in step4)
    assert all(image.checkpoint_id is None for image in images if image.step == 0)
    # Same prompt and seed at every step, so the pictures compare like for like.
    assert {(i.prompt, i.seed) for i in images if i.step == 0} == {(i.prompt, i.seed) for i in step4}

    # The LoRA learned something (lora_up starts at zero) and the shared UNet is left clean.
    kohya = load_file(await store.local_path(rows[1].kohya_file))
    assert any(value.abs().sum() > 0 for key, value in kohya.items() if key.endswith("lora_up.weight"))
    assert TRAINING_ADAPTER not in getattr(base.pipe.unet, "peft_config", {})
    # No idle LoRA wrapper layers either: they would slow every later generation.
    assert not has_tuner_layers(base.pipe)
    assert not base.pipe.unet.training
    assert torch.equal(unet_output(base), before)

    # The diffusers file loads with the standard API and changes what the model predicts.
    folder = (await store.local_path(rows[1].diffusers_file)).parent
    base.pipe.load_lora_weights(str(folder), adapter_name="check")
    try:
        assert not torch.allclose(unet_output(base), before)
    finally:
        base.pipe.delete_adapters("check")
    assert torch.equal(unet_output(base), before)


async def test_a_round_that_cannot_be_stored_fails_the_run_and_its_checkpoint_stays_for_a_resume(
    db, store: FileStore, data: DataDir, generator: Generator, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Rounds are stored while the training goes on; a round that fails to store (a full disk
    here) still ends the run as a failure in plain words (the cause in the log, for the operator:
    the member reads the run's error), and nothing is left half-written."""
    pet = await pet_with_photos(db, store)
    run_id = await create_run(db, store, pet, TrainingParams(steps=4, checkpoint_every=2, validate_every=2, **QUICK))
    real_put = store.put_file

    async def disk_full_at_step_2(key: str, path: Path, *, move: bool = False) -> None:
        if "/validation/step-00002-" in key:
            raise OSError(28, "No space left on device")
        await real_put(key, path, move=move)

    monkeypatch.setattr(store, "put_file", disk_full_at_step_2)
    outcome = await execute_run(db, store, data, generator, run_id)

    assert outcome.status == "failed" and "a problem on the server" in outcome.error
    assert "No space left on device" in caplog.text and "No space left on device" not in outcome.error
    assert {image.step for image in await runs.list_validation_images(db, run_id)} == {0}
    checkpoints = await runs.list_checkpoints(db, run_id)
    assert checkpoints[0].step == 2 and await store.exists(state_key(checkpoints[0].path))
    assert list(data.tmp_dir().iterdir()) == []

    monkeypatch.setattr(store, "put_file", real_put)
    resumed = await execute_run(db, store, data, generator, run_id)
    assert (resumed.status, resumed.step) == ("succeeded", 4)
    assert sorted({image.step for image in await runs.list_validation_images(db, run_id)}) == [0, 2, 4]


async def test_kohya_file_uses_sdxl_kohya_names_that_map_onto_the_unet(
    db, store: FileStore, data: DataDir, base: BaseModel, generator: Generator) -> None:
    pet = await pet_with_photos(db, store)
    run_id = await create_run(db, store, pet, TrainingParams(steps=1, rank=2, alpha=1.0, validate_every=0, **QUICK))
    assert (await execute_run(db, store, data, generator, run_id)).status == "succeeded"
    [checkpoint] = await runs.list_checkpoints(db, run_id)
    kohya = load_file(await store.local_path(checkpoint.kohya_file))

    # kohya's scheme: lora_unet_ + the diffusers module path with '.' -> '_'; A1111/ComfyUI map it back.
    # (Earlier runs on the shared UNet leave peft wrappers around the Linear layers: look through them.)
    underscored = {
        name.replace(".", "_"): getattr(module, "base_layer", module)
        for name, module in base.pipe.unet.named_modules()
        if not re.search(r"\.(base_layer|lora_\w+)(\.|$)", name)
    }
    modules = set()
    for key, value in kohya.items():
        match = KOHYA_KEY.match(key)
        assert match, key
        module = underscored.get(match.group(1))
        assert isinstance(module, torch.nn.Linear), f"{key} names no Linear layer of the UNet"
        modules.add(match.group(1))
        if match.group(2) == "alpha":
            assert float(value) == 1.0
        elif match.group(2) == "lora_down.weight":
            assert value.shape == (2, module.in_features)
        else:
            assert value.shape == (module.out_features, 2)
    assert all(re.search(r"attn[12]_to_(q|k|v|out_0)$", name) for name in modules)
    expected = [n for n in underscored if re.search(r"attn[12]_to_(q|k|v|out_0)$", n) and isinstance(underscored[n], torch.nn.Linear)]
    assert modules == set(expected)
    assert len(kohya) == 3 * len(expected)


def test_a_lora_trained_wider_for_speed_saves_exactly_what_it_learnt(base: BaseModel) -> None:
    """Rank 4 trains 8 wide (aligned matrix products); the checkpoint holds rank-4 factors that paint
    exactly what the trained adapter painted."""
    params = TrainingParams(steps=3, rank=4, alpha=2.0, **QUICK)
    unet = base.pipe.unet
    untrained = unet_output(base)
    trainer = LoraTrainer(base, params, synthetic_cache(base, params), plan_memory(params, base, None))
    try:
        for step in range(params.steps):
            trainer.train_step(step)
        unet.eval()
        trained = unet_output(base)
        saved = trainer.lora_state_dict()
    finally:
        trainer.close()
    assert not torch.allclose(trained, untrained)
    assert all(v.shape[0] == 4 for k, v in saved.items() if "lora_A" in k)
    assert all(v.shape[1] == 4 for k, v in saved.items() if "lora_B" in k)

    unet.add_adapter(LoraConfig(r=4, lora_alpha=2.0, target_modules=list(params.target_modules)), adapter_name="saved")
    try:
        set_peft_model_state_dict(unet, saved, adapter_name="saved")
        assert torch.allclose(unet_output(base), trained, atol=1e-6, rtol=0)
    finally:
        unet.delete_adapters("saved")
        unet.unload_lora()


def test_steps_still_train_the_unet_after_its_layers_were_moved_away_and_back(base: BaseModel) -> None:
    """A picture painted in low memory mode moves the UNet to the CPU and back between two steps,
    which gives every layer new tensors: the optimizer's flat copy must still reach them."""
    params = TrainingParams(steps=3, **QUICK)
    unet = base.pipe.unet
    trainer = LoraTrainer(base, params, synthetic_cache(base, params), plan_memory(params, base, None))
    try:
        trainer.train_step(0)
        unet.to(torch.float64).to(base.dtype)  # new memory for every tensor, the same values
        unet.eval()
        before = unet_output(base)
        trainer.activate()
        trainer.train_step(1)
        unet.eval()
        assert not torch.allclose(unet_output(base), before)
    finally:
        trainer.close()


def test_a_checkpoint_saved_before_the_widening_still_resumes(base: BaseModel) -> None:
    """Checkpoints written when rank 4 trained 4 wide carry optimizer moments of that width: the
    resume takes their LoRA and step and starts the moments again, rather than failing."""
    params = TrainingParams(steps=4, rank=4, **QUICK)
    cache = synthetic_cache(base, params)
    trainer = LoraTrainer(base, params, cache, plan_memory(params, base, None))
    try:
        for step in range(2):
            trainer.train_step(step)
        lora = trainer.lora_state_dict()
        state = trainer.state_dict(2, lora)
    finally:
        trainer.close()
    del state["trained_rank"]  # as saved before the widening
    resumed = LoraTrainer(base, params, cache, plan_memory(params, base, None))
    try:
        assert resumed.load_state_dict(state) == 2
        assert all(torch.equal(resumed.lora_state_dict()[key], value) for key, value in lora.items())
        assert not resumed.optimizer.state  # moments start again
        resumed.train_step(2)
    finally:
        resumed.close()


async def test_cancel_then_resume_equals_an_uninterrupted_run(
    db, store: FileStore, data: DataDir, base: BaseModel, generator: Generator) -> None:
    pet = await pet_with_photos(db, store)
    params = TrainingParams(steps=5, checkpoint_every=2, validate_every=0, flip=True, **QUICK)
    straight = await create_run(db, store, pet, params)
    assert (await execute_run(db, store, data, generator, straight)).status == "succeeded"

    interrupted = await create_run(db, store, pet, params)
    boundaries = []

    def cancel_at_step_3() -> bool:
        boundaries.append(len(boundaries))
        return len(boundaries) > 4  # the step-0 validation check, then before steps 1..3; cancel before step 4

    outcome = await execute_run(db, store, data, generator, interrupted, TrainingHooks(should_cancel=cancel_at_step_3))
    assert (outcome.status, outcome.step) == ("cancelled", 3)
    run = await runs.get_run(db, interrupted)
    assert (run.status, run.step) == ("cancelled", 3)
    assert [c.step for c in await runs.list_checkpoints(db, interrupted)] == [2]
    assert TRAINING_ADAPTER not in getattr(base.pipe.unet, "peft_config", {})

    resumed = await execute_run(db, store, data, generator, interrupted)  # continues from the step-2 checkpoint
    assert (resumed.status, resumed.step) == ("succeeded", 5)
    assert [c.step for c in await runs.list_checkpoints(db, interrupted)] == [2, 4, 5]
    # Step-0 validation from the first attempt is kept, the final one rendered once.
    assert [i.step for i in await runs.list_validation_images(db, interrupted)] == [0, 0, 0, 5, 5, 5]

    final_a = load_file(await store.local_path((await runs.list_checkpoints(db, straight))[-1].diffusers_file))
    final_b = load_file(await store.local_path((await runs.list_checkpoints(db, interrupted))[-1].diffusers_file))
    assert final_a.keys() == final_b.keys()
    for key in final_a:
        assert torch.allclose(final_a[key], final_b[key], atol=1e-6, rtol=0), key


async def test_a_generation_between_steps_does_not_change_the_training(
    db, store: FileStore, data: DataDir, base: BaseModel, generator: Generator) -> None:
    """The worker may use the same UNet between two steps; the trainer must pick up exactly where it was."""
    pet = await pet_with_photos(db, store)
    params = TrainingParams(steps=3, checkpoint_every=3, validate_every=0, **QUICK)
    straight = await create_run(db, store, pet, params)
    assert (await execute_run(db, store, data, generator, straight)).status == "succeeded"

    unet = base.pipe.unet
    calls = []

    def generate_in_between(make_room) -> None:
        # What a generation may leave behind: adapters off, eval mode, nothing trainable.
        make_room()
        calls.append(unet_output(base))
        unet.disable_adapters()
        unet.eval()
        unet.requires_grad_(False)

    shared = await create_run(db, store, pet, params)
    outcome = await execute_run(db, store, data, generator, shared, TrainingHooks(between_steps=generate_in_between))
    assert outcome.status == "succeeded" and len(calls) == 3
    final_a = load_file(await store.local_path((await runs.list_checkpoints(db, straight))[-1].diffusers_file))
    final_b = load_file(await store.local_path((await runs.list_checkpoints(db, shared))[-1].diffusers_file))
    for key in final_a:
        assert torch.allclose(final_a[key], final_b[key], atol=1e-6, rtol=0), key


async def test_keep_checkpoints_prunes_older_ones(db, store: FileStore, data: DataDir, generator: Generator) -> None:
    pet = await pet_with_photos(db, store)
    params = TrainingParams(steps=3, checkpoint_every=1, validate_every=1, keep_checkpoints=2, **QUICK)
    run_id = await create_run(db, store, pet, params)
    assert (await execute_run(db, store, data, generator, run_id)).status == "succeeded"
    kept = await runs.list_checkpoints(db, run_id)
    assert [c.step for c in kept] == [2, 3]
    checkpoint_files = await stored(store, f"{keys.run_prefix(run_id)}/checkpoints")
    assert checkpoint_files and {key.rpartition("/")[0] for key in checkpoint_files} == {c.path for c in kept}
    images = await runs.list_validation_images(db, run_id)
    assert sorted({i.step for i in images}) == [0, 2, 3]
    assert await stored(store, f"{keys.run_prefix(run_id)}/validation") == {i.path for i in images}


async def test_prior_preservation_generates_class_images_once_per_class(
    db, store: FileStore, data: DataDir, generator: Generator
) -> None:
    params = TrainingParams(
        steps=1, prior_preservation=True, class_images=2, validate_every=0, **QUICK
    )

    async def class_images() -> dict[str, float]:
        return {item.key: item.modified for item in await store.list(keys.class_images("cat"))}

    first = await pet_with_photos(db, store, name="Thor")
    run = await create_run(db, store, first, params)
    assert (await execute_run(db, store, data, generator, run)).status == "succeeded"
    made = await class_images()
    assert sorted(made) == ["class-images/cat/0000.png", "class-images/cat/0001.png"]
    for key in made:
        assert Image.open(await store.local_path(key)).size == (64, 64)

    second = await pet_with_photos(db, store, name="Loki")
    run = await create_run(db, store, second, params)
    assert (await execute_run(db, store, data, generator, run)).status == "succeeded"
    assert await class_images() == made  # drawn once, reused by the second cat


async def test_class_nouns_in_other_scripts_get_class_images_of_their_own(
    db, store: FileStore, generator: Generator
) -> None:
    """'猫' and '犬' have no Latin letters to slug: a dog must not learn its prior from cats'
    pictures, while nouns in Latin letters keep the folders installations already have."""

    async def never() -> bool:
        return False

    for noun in ("猫", "犬"):
        await ensure_class_images(db, store, generator, noun, 1, 64, should_stop=never)
    drawn = sorted(item.key for item in await store.list("class-images"))
    # The dog's prior was drawn for '犬' into a folder of its own, not taken from the cats'.
    assert drawn == sorted(keys.class_image(noun, 0) for noun in ("猫", "犬")) and len(set(drawn)) == 2
    folders = [keys.class_images(noun) for noun in ("猫", "犬", "cat猫", "cat")]
    assert len(set(folders)) == 4 and all(re.fullmatch(r"class-images/[a-z0-9_-]+", f) for f in folders)
    assert keys.class_images("猫") == keys.class_images(" 猫 ")  # the same class, the same folder
    assert [keys.class_images(noun) for noun in ("cat", "Maine Coon", "bichón")] == [
        "class-images/cat", "class-images/maine-coon", "class-images/bichon"
    ]


async def picture(store: FileStore, key: str) -> np.ndarray:
    with Image.open(await store.local_path(key)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


async def test_validation_rounds_and_class_images_are_what_imagine_paints(
    db, store: FileStore, data: DataDir, base: BaseModel, generator: Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    painted: list[tuple[int, object]] = []
    render = generator.render

    def counted(job: Render, **how: object) -> list[Image.Image]:
        painted.append((len(job.seeds), how.get("adapter")))
        return render(job, **how)

    monkeypatch.setattr(generator, "render", counted)
    pet = await pet_with_photos(db, store)
    params = TrainingParams(steps=2, checkpoint_every=2, validate_every=2, prior_preservation=True, class_images=5, **QUICK)
    run_id = await create_run(db, store, pet, params)
    assert (await execute_run(db, store, data, generator, run_id)).status == "succeeded"

    # Class images four to a batch with no adapter, then one call per validation round with the LoRA merged.
    assert painted == [(4, None), (1, None), (3, TRAINING_ADAPTER), (3, TRAINING_ADAPTER)]
    imagine = Generator(base, memory="full", size_scale=params.resolution / 1024)  # its 1:1 preset at the run's size

    async def imagined(prompt: str, seed: int, checkpoint_id: int | None) -> np.ndarray:
        """What `/imagine` paints with its defaults for this prompt and seed, with the checkpoint's LoRA."""
        lora = None
        if checkpoint_id is not None:
            [checkpoint] = [row for row in await runs.list_checkpoints(db, run_id) if row.id == checkpoint_id]
            lora = PetLora(checkpoint.diffusers_file, await store.local_path(checkpoint.diffusers_file))
        result = imagine.generate(GenerationRequest(prompt=prompt, seed=seed), lora=lora)
        return np.asarray(result.images[0], dtype=np.int16)

    for index in range(5):  # the plain base model's "a photo of cat" from seed i
        drawn = await picture(store, keys.class_image("cat", index))
        assert np.abs(drawn - await imagined("a photo of cat", index, None)).max() <= 1
    images = await runs.list_validation_images(db, run_id)
    assert [image.checkpoint_id is not None for image in images] == [False] * 3 + [True] * 3
    for image in images:  # step 0: the untrained LoRA adds nothing; step 2: its checkpoint's LoRA
        reference = await imagined(image.prompt, image.seed, image.checkpoint_id)
        assert np.abs(await picture(store, image.path) - reference).max() <= 1
    # A LoRA that changes the pictures: the comparison above would notice a round painted without it.
    trained = [image for image in images if image.checkpoint_id is not None]
    assert np.abs(await picture(store, trained[0].path) - await imagined(trained[0].prompt, trained[0].seed, None)).max() > 1


def counting_aot_backend() -> tuple[dict[str, int], object]:
    """A dynamo backend through AOTAutograd (as inductor's is) that runs the traced graphs as they are and
    counts forward and backward compilations and compiled calls."""
    counts = {"forward": 0, "backward": 0, "calls": 0}

    def compiler(kind: str) -> object:
        def compile(graph: torch.fx.GraphModule, example_inputs: list) -> object:
            counts[kind] += 1

            def run(*args: object) -> object:
                counts["calls"] += 1
                return graph(*args)

            return make_boxed_func(run)

        return compile

    return counts, aot_autograd(fw_compiler=compiler("forward"), bw_compiler=compiler("backward"))


# Lean mode too: gradient checkpointing runs the blocks again inside the backward.
@pytest.mark.parametrize("train_mode", ["fast", "lean"])
async def test_the_training_step_is_compiled_in_idle_time_and_no_training_waits_for_it(
    db, store: FileStore, data: DataDir, tiny_model_dir: Path, train_mode: str
) -> None:
    base = load_base_model(Settings(model=str(tiny_model_dir), vae=None, device="cpu", resolution=64))
    generator = Generator(base, memory="full")
    counts, backend = counting_aot_backend()
    ahead = TrainingCompileAhead(base, backend)
    pet = await pet_with_photos(db, store)
    params = TrainingParams(steps=2, checkpoint_every=2, validate_every=0, mode=train_mode, **QUICK)
    assert params.compile  # on by default

    async def a_run() -> tuple[dict[str, torch.Tensor], list[np.ndarray]]:
        """The LoRA it learned and its validation pictures (before the first step and after the last)."""
        run_id = await create_run(db, store, pet, params)
        assert (await execute_run(db, store, data, generator, run_id, compile_ahead=ahead)).status == "succeeded"
        lora = load_file(await store.local_path((await runs.list_checkpoints(db, run_id))[-1].diffusers_file))
        return lora, [await picture(store, image.path) for image in await runs.list_validation_images(db, run_id)]

    # Not compiled yet: the run trains uncompiled rather than wait, and leaves its plan to compile.
    uncompiled, uncompiled_pictures = await a_run()
    assert counts == {"forward": 0, "backward": 0, "calls": 0} and ahead.pending

    # Idle time: one block variant at a time, forward and backward, then the UNet is left as it was.
    steps = 0
    while ahead.step():
        steps += 1
    assert steps > 3 and counts["forward"] > 0 and counts["backward"] > 0 and not ahead.pending
    assert not has_tuner_layers(base.pipe)

    # The next run runs the compiled code, its validation rounds too, and compiles nothing more;
    # it learns the same LoRA and paints the same validation pictures.
    compiled_so_far, calls = counts["forward"] + counts["backward"], counts["calls"]
    learned, pictures = await a_run()
    assert counts["forward"] + counts["backward"] == compiled_so_far and counts["calls"] > calls
    for key in uncompiled:  # (Adam's normalised steps amplify rounding in a few elements: compare whole tensors)
        assert (learned[key] - uncompiled[key]).norm() <= 1e-3 * uncompiled[key].norm(), key
    assert len(pictures) == len(uncompiled_pictures) == 6
    for mine, theirs in zip(pictures, uncompiled_pictures):
        assert np.abs(mine - theirs).max() <= 1


async def test_a_command_compiles_first_only_a_plan_a_worker_compiled_here(
    db, store: FileStore, data: DataDir, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`pawtrait train` has no idle time. It waits for a compile only where a worker here compiled
    the run's plan (the compiled code is in the cache then: seconds, not minutes) and trains that
    run compiled; a plan nobody compiled, or one compiled for another model, trains uncompiled at once."""
    settings = Settings(model=str(tiny_model_dir), vae=None, device="cpu", resolution=64)
    cache_folder = tmp_path / "compile-cache"
    counts, backend = counting_aot_backend()
    pet = await pet_with_photos(db, store)
    params = TrainingParams(steps=2, checkpoint_every=2, validate_every=0, **QUICK)

    async def command_run(run_params: TrainingParams) -> dict[str, int]:
        """What a fresh `pawtrait train` process compiles and runs compiled: its own model, the record
        read from the folder."""
        base = load_base_model(settings)
        command = TrainingCompileAhead(base, backend, CompiledPlans.in_folder(cache_folder, base), wait_for_recorded=True)
        before = dict(counts)
        run_id = await create_run(db, store, pet, run_params)
        assert (await execute_run(db, store, data, Generator(base, memory="full"), run_id,
                                  compile_ahead=command)).status == "succeeded"
        return {kind: counts[kind] - before[kind] for kind in counts}

    # No worker compiled anything here yet: the command trains at once, uncompiled.
    assert await command_run(params) == {"forward": 0, "backward": 0, "calls": 0}

    # A worker compiles the default plan in its idle time and writes it down beside the compiled code.
    worker_base = load_base_model(settings)
    worker = TrainingCompileAhead(worker_base, backend, CompiledPlans.in_folder(cache_folder, worker_base))
    worker.want(params)
    while worker.step():
        pass
    assert (cache_folder / "pawtrait-training-plans.json").is_file()

    # Now the command compiles that plan before its first step and runs its steps and rounds compiled.
    # (Within one test process dynamo already holds the worker's graphs and compiles nothing again;
    # a fresh process compiles them, from inductor's cache.)
    assert (await command_run(params))["calls"] > 0

    # Another plan (a wider LoRA) was never compiled here: uncompiled, nothing compiled for it.
    assert await command_run(replace(params, rank=8)) == {"forward": 0, "backward": 0, "calls": 0}

    # The record is for this model only: the same plan with another base model trains uncompiled.
    other = replace(settings, model=str(tmp_path / "another-model"))
    shutil.copytree(tiny_model_dir, other.model)
    settings = other
    assert await command_run(params) == {"forward": 0, "backward": 0, "calls": 0}


async def test_bad_inputs_are_refused_in_plain_words(db, store: FileStore, data: DataDir, generator: Generator) -> None:
    empty = await create_pet(db, LOCAL_GUILD, "owner", "Ghost", "dog")
    with pytest.raises(TrainingInputError, match="no photos yet"):
        await create_run(db, store, empty, TrainingParams(**QUICK))
    pet = await pet_with_photos(db, store)
    for bad, message in [
        (dict(steps=0), "Steps must be at least 1"),
        (dict(steps=-5), "Steps must be at least 1"),
        (dict(rank=0), "Rank must be at least 1"),
        (dict(resolution=100), "multiple of 64"),
        (dict(mode="turbo"), "The mode must be one of"),
    ]:
        with pytest.raises(TrainingInputError, match=message):
            await create_run(db, store, pet, TrainingParams(**{**QUICK, **bad}))
    with pytest.raises(TrainingInputError, match="There is no training run 999"):
        await execute_run(db, store, data, generator, 999)
    assert await runs.list_runs(db, pet.id) == []
    # A photo whose file went missing from the store: refused before queueing, naming the problem.
    [photo] = (await list_photos(db, pet.id))[:1]
    await store.delete([photo.prepared_path])
    with pytest.raises(TrainingInputError, match="1 of Thor's prepared photos are missing from the file store"):
        await create_run(db, store, pet, TrainingParams(**QUICK))
    assert await runs.list_runs(db, pet.id) == []


def test_params_round_trip_through_json() -> None:
    import json

    params = TrainingParams(steps=7, alpha=8.0, validation_prompts=("TOK cat on a boat",), flip=True)
    again = TrainingParams.from_dict(json.loads(json.dumps(params.to_dict())))
    assert again == params and again.lora_alpha == 8.0
    assert TrainingParams().lora_alpha == 4.0  # the seed's rank = alpha
    assert TrainingParams.from_dict({"steps": 3, "from_the_future": 1}).extra == {"from_the_future": 1}


async def test_vote_tally_counts_votes_per_checkpoint_step(db, store: FileStore) -> None:
    pet = await pet_with_photos(db, store, count=1)
    run_id = await runs.insert_run(db, pet.id, TrainingParams().to_dict(), 200)
    c100 = await runs.add_checkpoint(db, run_id, 100, "a", "a/x", "a/y")
    c200 = await runs.add_checkpoint(db, run_id, 200, "b", "b/x", "b/y")
    before = await runs.add_validation_image(db, run_id, 0, None, "p", 42, "v0.png")
    img100 = await runs.add_validation_image(db, run_id, 100, c100, "p", 42, "v1.png")
    img200 = await runs.add_validation_image(db, run_id, 200, c200, "p", 42, "v2.png")
    assert await runs.add_vote(db, "ann", "⭐", validation_image_id=img100)
    assert not await runs.add_vote(db, "ann", "⭐", validation_image_id=img100)  # once per user and emoji
    assert await runs.add_vote(db, "bob", "⭐", validation_image_id=img100)
    assert await runs.add_vote(db, "cat", "⭐", checkpoint_id=c200)
    assert await runs.add_vote(db, "cat", "👍", validation_image_id=img200)
    assert await runs.add_vote(db, "dan", "⭐", validation_image_id=before)  # step 0 is not a candidate
    assert await runs.vote_tally(db, run_id) == {100: 2, 200: 2}
    assert await runs.vote_tally(db, run_id, "⭐") == {100: 2, 200: 1}
    assert await runs.remove_vote(db, "bob", "⭐", validation_image_id=img100)
    assert await runs.vote_tally(db, run_id, "⭐") == {100: 1, 200: 1}


def test_mode_follows_free_memory_unless_forced() -> None:
    from types import SimpleNamespace

    from engine.gpu.training.loop import plan_memory

    gpu = SimpleNamespace(device=torch.device("cuda"))
    gib = 2**30
    roomy = plan_memory(TrainingParams(), gpu, 70 * gib)
    assert (roomy.mode, roomy.gradient_checkpointing, roomy.micro_batch) == ("fast", False, 4)
    tight = plan_memory(TrainingParams(), gpu, 14 * gib)
    assert (tight.mode, tight.gradient_checkpointing, tight.offload_encoders) == ("lean", True, True)
    forced = plan_memory(TrainingParams(mode="fast", gradient_checkpointing=True, micro_batch=2), gpu, 14 * gib)
    assert (forced.mode, forced.gradient_checkpointing, forced.micro_batch) == ("fast", True, 2)
    prior = plan_memory(TrainingParams(prior_preservation=True), gpu, 70 * gib)
    assert (prior.mode, prior.micro_batch) == ("fast", 8)  # 4 photos + 4 class images in one pass
    small_card_prior = plan_memory(TrainingParams(prior_preservation=True), gpu, 15 * gib)
    assert (small_card_prior.mode, small_card_prior.micro_batch) == ("lean", 4)
    # A 12 GB card beside the resident model: 5.1 GiB free, 1.5 GiB more once the text encoders
    # are on the CPU: 4 images a pass. An 8 GB card (2.4 GiB free with the UNet brought over):
    # one image a pass, the same 4 per optimizer step.
    twelve = plan_memory(TrainingParams(), gpu, int(5.1 * gib), int(1.5 * gib))
    assert (twelve.mode, twelve.micro_batch) == ("lean", 4)
    eight = plan_memory(TrainingParams(), gpu, int(2.4 * gib))
    assert (eight.mode, eight.micro_batch, TrainingParams().images_per_step) == ("lean", 1, 4)
    assert plan_memory(TrainingParams(), gpu, int(3.2 * gib)).micro_batch == 2
    assert plan_memory(TrainingParams(micro_batch=4), gpu, int(2.4 * gib)).micro_batch == 4  # asked for
