"""Generation on the tiny SDXL: reproducible seeds, pet LoRAs, sizes, previews, PNG metadata, errors.

Pet LoRAs here are made the way a trained one looks on disk (a peft LoRA on the UNet's
attention projections, saved with diffusers' `save_lora_weights`) but with random weights,
so they change the picture without any training.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from peft import LoraConfig, get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image
from sqlalchemy import func, select

from config.settings import Settings
from engine.gpu.generation.generator import Generator, PetLora
from engine.gpu.generation.guidance import GuidanceInterval
from engine.gpu.generation.recipe import Recipe
from engine.gpu.generation.service import generate_and_record
from engine.gpu.models import load_base_model
from engine.usecases.generation.metadata import CHUNK, Parameters, format_parameters, parse_parameters
from engine.usecases.generation.request import SIZE_PRESETS, GenerationError, GenerationRequest
from storage import keys, runs
from storage.files import DataDir, FileStore
from storage.generations import get_generation
from storage.pet_deletion import forget_pet
from storage.pets import LOCAL_GUILD, Pet, create_pet, get_pet, set_active_checkpoint
from storage.schema import generations

from cli_helpers import pawtrait

SMALL = 1 / 8  # presets at 1/8 scale: 1:1 renders 128x128 on the tiny model


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def same(a: list[Image.Image], b: list[Image.Image]) -> bool:
    return len(a) == len(b) and all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(a, b))


def load_tiny(model_dir: Path):
    return load_base_model(Settings(model=str(model_dir), vae=None, device="cpu"))


@pytest.fixture(scope="module")
def lora_files(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two different random pet LoRAs in diffusers format, as training writes them."""
    unet = load_tiny(tiny_model_dir).pipe.unet
    files = []
    for index in range(2):
        torch.manual_seed(100 + index)
        config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
        unet.add_adapter(config, adapter_name=f"make-{index}")
        folder = tmp_path_factory.mktemp(f"lora-{index}")
        StableDiffusionXLPipeline.save_lora_weights(
            folder, unet_lora_layers=get_peft_model_state_dict(unet, adapter_name=f"make-{index}")
        )
        unet.delete_adapters(f"make-{index}")
        files.append(folder / "pytorch_lora_weights.safetensors")
    return files


@pytest.fixture(scope="module")
def generator(tiny_model_dir: Path) -> Generator:
    return Generator(load_tiny(tiny_model_dir), memory="full", size_scale=SMALL)


def pet_for(token: str = "zqxjv") -> Pet:
    return Pet(id=1, guild_id=LOCAL_GUILD, owner_id="o", name="Thor", token=token, class_noun="cat",
               active_checkpoint_id=None, created_at="")


def quick(prompt: str = "a photo of a cat", **overrides) -> GenerationRequest:
    values = dict(prompt=prompt, steps=3, seed=11)
    values.update(overrides)
    return GenerationRequest(**values)


def test_same_seed_same_pixels_and_each_image_has_its_own_seed(generator: Generator) -> None:
    first = generator.generate(quick(count=2, seed=7))
    again = generator.generate(quick(count=2, seed=7))
    alone = generator.generate(quick(count=1, seed=8))
    assert first.seeds == [7, 8]
    assert same(first.images, again.images)
    assert not same(first.images[:1], first.images[1:])
    # Image i depends only on seed + i: alone, seed 8 repeats the batch's second picture (up to
    # float rounding of batched kernels: at most one level in a few pixels).
    assert np.abs(pixels(first.images[1]) - pixels(alone.images[0])).max() <= 2


def test_random_seed_is_drawn_and_reported(generator: Generator) -> None:
    a = generator.generate(quick(seed=None))
    b = generator.generate(quick(seed=a.seeds[0]))
    assert same(a.images, b.images)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_counts_one_to_four_in_one_batch(generator: Generator, count: int) -> None:
    result = generator.generate(quick(count=count, steps=2, seed=3))
    assert len(result.images) == count
    assert result.seeds == list(range(3, 3 + count))


def test_every_size_preset_keeps_its_aspect(generator: Generator) -> None:
    quarter = Generator(generator.base, memory="full", size_scale=1 / 4)  # 1:1 -> 256x256
    for size, (width, height) in SIZE_PRESETS.items():
        image = quarter.generate(quick(size=size, steps=1)).images[0]
        assert image.size == quarter.output_size(quick(size=size))
        assert image.width % 32 == 0 and image.height % 32 == 0
        assert abs(image.width / image.height - width / height) < 0.1, size
    full = Generator(generator.base, memory="full")  # SDXL's native presets, exactly
    assert all(full.output_size(quick(size=size)) == preset for size, preset in SIZE_PRESETS.items())


def test_sizes_follow_the_configured_resolution(generator: Generator) -> None:
    """PAWTRAIT_RESOLUTION is the model's native side: presets are ~1 MP at 1024 and scale with it."""
    settings = Settings(model="unused", vae=None, device="cpu", resolution=512)
    assert Generator.from_settings(generator.base, settings).output_size(quick(size="1:1")) == (512, 512)
    native = Generator.from_settings(generator.base, Settings(model="unused", device="cpu"))
    assert native.output_size(quick(size="16:9")) == SIZE_PRESETS["16:9"]


def test_lora_changes_the_picture_and_strength_zero_is_the_base(generator: Generator, lora_files: list[Path]) -> None:
    pet = pet_for()
    lora = PetLora("lora-0", lora_files[0])
    base = generator.generate(quick("a photo of TOK cat"), pet=pet)
    with_lora = generator.generate(quick("a photo of TOK cat"), pet=pet, lora=lora)
    at_zero = generator.generate(quick("a photo of TOK cat", lora_scale=0.0), pet=pet, lora=lora)
    half = generator.generate(quick("a photo of TOK cat", lora_scale=0.5), pet=pet, lora=lora)
    assert not same(base.images, with_lora.images)
    assert same(base.images, at_zero.images)
    assert not same(half.images, with_lora.images) and not same(half.images, base.images)
    # and the base is still the base after a LoRA was used
    assert same(base.images, generator.generate(quick("a photo of TOK cat"), pet=pet).images)


def test_switching_pets_and_back_equals_loading_each_fresh(tiny_model_dir: Path, lora_files: list[Path]) -> None:
    pet = pet_for()
    request = quick("TOK on a sofa", steps=2)
    switching = Generator(load_tiny(tiny_model_dir), memory="full", size_scale=SMALL)
    order = [0, 0, 1, 0, 1, 1]
    seen = [switching.generate(request, pet=pet, lora=PetLora(f"lora-{i}", lora_files[i])).images for i in order]
    assert switching.loras.loaded() == ["lora-0", "lora-1"]
    for index in (0, 1):
        fresh = Generator(load_tiny(tiny_model_dir), memory="full", size_scale=SMALL)
        expected = fresh.generate(request, pet=pet, lora=PetLora(f"lora-{index}", lora_files[index])).images
        assert all(same(images, expected) for images, i in zip(seen, order) if i == index)
    assert not same(seen[0], seen[2])


def test_lru_cache_evicts_the_least_recently_used_pet(tiny_model_dir: Path, lora_files: list[Path]) -> None:
    small = Generator(load_tiny(tiny_model_dir), memory="full", size_scale=SMALL, lora_capacity=1)
    pet = pet_for()
    first = small.generate(quick("TOK", steps=1), pet=pet, lora=PetLora("lora-0", lora_files[0]))
    small.generate(quick("TOK", steps=1), pet=pet, lora=PetLora("lora-1", lora_files[1]))
    assert small.loras.loaded() == ["lora-1"]
    # Pets are merged into the weights per request: no peft layers are left to slow the UNet down.
    assert not any(isinstance(module, BaseTunerLayer) for module in small.pipe.unet.modules())
    again = small.generate(quick("TOK", steps=1), pet=pet, lora=PetLora("lora-0", lora_files[0]))
    assert same(first.images, again.images)


def test_another_file_is_another_lora_whatever_its_checkpoint_row(
    tiny_model_dir: Path, lora_files: list[Path]
) -> None:
    """A worker knows LoRAs by their file's key: a later checkpoint that got an old row's id
    (a restored backup) is read from its own file, never taken from the cache."""
    pet, request = pet_for(), quick("TOK on a sofa", steps=2)
    worker = Generator(load_tiny(tiny_model_dir), memory="full", size_scale=SMALL)
    old = worker.generate(request, pet=pet, lora=PetLora("runs/1/checkpoints/step-100-aaaa/lora", lora_files[0]))
    new = worker.generate(request, pet=pet, lora=PetLora("runs/1/checkpoints/step-100-bbbb/lora", lora_files[1]))
    fresh = Generator(load_tiny(tiny_model_dir), memory="full", size_scale=SMALL)
    expected = fresh.generate(request, pet=pet, lora=PetLora("runs/1/checkpoints/step-100-bbbb/lora", lora_files[1]))
    assert same(new.images, expected.images) and not same(old.images, new.images)


def test_a_paused_training_adapter_is_left_exactly_as_it_was(tiny_model_dir: Path, lora_files: list[Path]) -> None:
    """Generation between two training steps must not disturb the trainer's adapter on the same UNet."""
    gen = Generator(load_tiny(tiny_model_dir), memory="full", size_scale=SMALL)
    unet = gen.base.pipe.unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"]), adapter_name="train-7")
    unet.train()
    trainable = {name for name, p in unet.named_parameters() if p.requires_grad}
    assert trainable and all("train-7" in name for name in trainable)
    weights = {name: p.detach().clone() for name, p in unet.named_parameters()}

    gen.generate(quick("TOK", steps=1), pet=pet_for(), lora=PetLora("lora-0", lora_files[0]))
    # The pet LoRA was merged into the weights for its picture; they are back bit for bit at once.
    assert all(torch.equal(p, weights[name]) for name, p in unet.named_parameters() if name in weights)
    gen.generate(quick("a cat", steps=1))

    assert unet.active_adapters() == ["train-7"]
    assert unet.training
    assert {name for name, p in unet.named_parameters() if p.requires_grad} == trainable
    assert all(torch.equal(p, weights[name]) for name, p in unet.named_parameters() if name in weights)
    loss = unet(torch.randn(1, 4, 8, 8), 10, torch.randn(1, 77, 64),
                added_cond_kwargs={"text_embeds": torch.randn(1, 32), "time_ids": torch.randn(1, 6)}).sample.mean()
    loss.backward()  # the trainer's next step still gets gradients
    assert all(p.grad is not None for name, p in unet.named_parameters() if name in trainable)


def test_a_vae_overflow_is_decoded_again_in_float32(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fp16 VAEs overflow into NaN (black pictures); the decode is redone in float32 instead."""
    gen = Generator(load_tiny(tiny_model_dir), memory="full", size_scale=SMALL)
    vae = gen.pipe.vae
    vae.to(torch.bfloat16)
    decode = vae.decode

    def overflowing(latents: torch.Tensor, **kwargs):
        pixels = decode(latents, **kwargs)
        return (pixels[0] * float("nan"),) if latents.dtype != torch.float32 else pixels

    monkeypatch.setattr(vae, "decode", overflowing)
    image = gen.generate(quick(steps=2)).images[0]
    assert pixels(image).std() > 0  # a real picture, not the all-black NaN one
    assert vae.dtype == torch.float32


def test_preview_every_step(generator: Generator) -> None:
    calls: list[tuple[int, int, Image.Image]] = []
    generator.generate(quick(steps=4, count=2), on_step=lambda step, total, preview: calls.append((step, total, preview())))
    assert [(step, total) for step, total, _ in calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    # two 128 px images side by side, at twice the 16 px latent size
    assert calls[-1][2].size == (64, 32) and calls[-1][2].mode == "RGB"


def variation(**overrides) -> GenerationRequest:
    return quick(source_generation_id=1, **{"steps": 4, **overrides})


def test_a_variation_repaints_its_source_at_its_size_and_repeats_per_seed(generator: Generator) -> None:
    source = generator.generate(quick(size="4:3", seed=1)).images[0]
    other_source = generator.generate(quick(size="4:3", seed=2)).images[0]
    steps_seen: list[tuple[int, int]] = []
    first = generator.generate(variation(seed=5, count=2), source=source,
                               on_step=lambda step, total, _image: steps_seen.append((step, total)))
    assert [image.size for image in first.images] == [source.size, source.size]
    assert first.seeds == [5, 6] and first.denoising_strength == 0.6
    assert steps_seen == [(1, 2), (2, 2)]  # strength 0.6 of 4 steps: the last 2 of the schedule run
    assert not same(first.images[:1], [source])
    assert not same(first.images[:1], first.images[1:])  # each image its own seed
    assert same(first.images, generator.generate(variation(seed=5, count=2), source=source).images)
    assert not same(first.images[:1], generator.generate(variation(seed=6), source=source).images)
    # The source matters: the same seed on another picture gives another variation.
    assert not same(first.images[:1], generator.generate(variation(seed=5), source=other_source).images)


def unet_batches(generator: Generator) -> tuple[list[int], object]:
    """The batch size of every UNet pass that really runs (the guidance interval halves some)."""
    batches: list[int] = []
    hook = generator.pipe.unet.conv_in.register_forward_hook(lambda _m, args, _out: batches.append(args[0].shape[0]))
    return batches, hook


def test_guidance_runs_only_inside_its_interval(tiny_model_dir: Path) -> None:
    base = load_tiny(tiny_model_dir)

    def paint(interval: GuidanceInterval | None, guidance: float = 5.0, count: int = 1):
        gen = Generator(base, memory="full", size_scale=SMALL, recipe=Recipe(interval=interval))
        batches, hook = unet_batches(gen)
        result = gen.generate(quick(negative_prompt="blurry", steps=30, guidance=guidance, count=count))
        hook.remove()
        return result, batches

    full, full_batches = paint(None)
    limited, batches = paint(GuidanceInterval())
    # SDXL's 30 Karras noise levels: 15 lie in (0.28, 5.42], so 15 steps run the prompt alone.
    assert full_batches == [2] * 30 and batches == [1] * 7 + [2] * 15 + [1] * 8
    assert limited.guidance_interval == GuidanceInterval() and full.guidance_interval is None
    assert not same(limited.images, full.images)
    # An interval holding every step is plain guidance; one holding none is no guidance at all.
    assert same(paint(GuidanceInterval(0, 1e9))[0].images, full.images)
    assert same(paint(GuidanceInterval(1e8, 1e9))[0].images, paint(None, guidance=1.0)[0].images)
    assert paint(GuidanceInterval(), count=4)[1] == [4] * 7 + [8] * 15 + [4] * 8


def test_a_variation_guides_inside_the_interval_from_where_it_starts(generator: Generator) -> None:
    source = generator.generate(quick(seed=1)).images[0]
    batches, hook = unet_batches(generator)
    generator.generate(quick(source_generation_id=1, steps=30, variation_strength=0.6, negative_prompt="blurry"),
                       source=source)
    hook.remove()
    # Strength 0.6 runs the last 18 of the 30 noise levels: 2.49 down to 0.03, guided while above 0.28.
    assert batches == [2] * 10 + [1] * 8


def test_prompt_handling_tok_class_noun_and_truncation(generator: Generator) -> None:
    pet = pet_for("zqxjv")
    assert generator.generate(quick("TOK cat in space"), pet=pet).prompt == "zqxjv cat in space"
    assert generator.generate(quick("a painting of TOK, oil"), pet=pet).prompt == "a painting of zqxjv cat, oil"
    long = generator.generate(quick("a photo of a cat " * 30))
    assert any("SDXL reads only 75" in w and "was ignored" in w for w in long.warnings)
    assert generator.generate(quick("a photo of a cat")).warnings == []
    with pytest.raises(GenerationError, match="TOK but names no pet"):
        generator.generate(quick("a photo of TOK"))


def test_metadata_text_round_trips_with_commas_colons_and_newlines() -> None:
    params = Parameters(
        prompt="a cat, sitting: on a mat\nsecond line",
        negative_prompt="blurry, dark",
        settings={"Steps": "30", "Sampler": "DPM++ 2M Karras", "CFG scale": "5", "Seed": "123",
                  "Size": "1024x1024", "Model": "sd_xl_base_1.0", "Lora": "Thor, the cat (zqxjv)", "Checkpoint": "4 (run 2, step 500)"},
    )
    text = format_parameters(params)
    assert text.splitlines()[-1].startswith("Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 5, Seed: 123, Size: 1024x1024")
    assert parse_parameters(text) == params
    assert parse_parameters(format_parameters(Parameters("plain", "", {"Steps": "2", "Seed": "1", "Size": "8x8"}))).negative_prompt == ""


# --- the service: storage, files, errors -------------------------------------------------------


async def add_trained_pet(db, store: FileStore, name: str, lora_file: Path | None, guild: str = LOCAL_GUILD,
                          status: str = "succeeded") -> Pet:
    """A pet with one training run (and, given a file, one checkpoint in the store, made active)."""
    pet = await create_pet(db, guild, "owner-1", name, "cat")
    run_id = await runs.insert_run(db, pet.id, {}, 100)
    if status == "running":
        await runs.mark_running(db, run_id, 100)
    else:
        await runs.finish_run(db, run_id, status, 100)
    if lora_file is not None:
        folder = keys.checkpoint(run_id, 100, keys.new_tag())
        await store.put_file(f"{folder}/pytorch_lora_weights.safetensors", lora_file)
        checkpoint_id = await runs.add_checkpoint(
            db, run_id, 100, folder, f"{folder}/pytorch_lora_weights.safetensors", f"{folder}/kohya.safetensors"
        )
        if status == "succeeded":
            await set_active_checkpoint(db, pet.id, checkpoint_id)
    return await get_pet(db, pet.id)


async def generation_count(db) -> int:
    return await db.scalar(select(func.count()).select_from(generations))


async def test_generate_and_record_writes_pngs_with_parameters_and_a_row(
    db, store: FileStore, settings, generator, lora_files
) -> None:
    data = DataDir(settings.data_dir)
    pet = await add_trained_pet(db, store, "Thor", lora_files[0])
    steps_seen: list[int] = []
    request = GenerationRequest(prompt="TOK cat, baking a cake", pet_id=pet.id, negative_prompt="blurry",
                                seed=42, steps=3, count=2, guidance=6.5)
    outcome = await generate_and_record(db, store, data, generator, request, LOCAL_GUILD, "user-9",
                                        on_step=lambda step, total, image: steps_seen.append(step))
    assert outcome.seeds == [42, 43] and steps_seen == [1, 2, 3]
    row = await get_generation(db, outcome.generation_id)
    assert row is not None and row.files == outcome.files and row.seed == 42 and row.pet_id == pet.id
    assert row.checkpoint_id == pet.active_checkpoint_id is not None
    # The pictures share a folder of their own in the store, named by their seeds.
    [folder] = {keys.parent(file) for file in outcome.files}
    assert folder.startswith("generations/")
    assert [file.rpartition("/")[2] for file in outcome.files] == ["1-seed-42.png", "2-seed-43.png"]
    assert {item.key for item in await store.list(folder)} == set(outcome.files)
    for index, file in enumerate(outcome.files):
        with Image.open(await store.local_path(file)) as image:
            parsed = parse_parameters(image.info[CHUNK])
        assert parsed.prompt == f"{pet.token} cat, baking a cake"
        assert parsed.negative_prompt == "blurry"
        assert parsed.settings["Seed"] == str(42 + index)
        assert parsed.settings["Steps"] == "3" and parsed.settings["CFG scale"] == "6.5"
        assert parsed.settings["Sampler"] == "DPM++ 2M Karras"
        assert parsed.settings["Guidance interval"] == "sigma 0.28-5.42"
        assert parsed.settings["Size"] == "128x128"
        assert parsed.settings["Lora"] == f"Thor ({pet.token})"
        assert parsed.settings["Checkpoint"].startswith(f"{row.checkpoint_id} (run ")
    assert not any(data.tmp_dir().iterdir())  # nothing staged is left behind


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(prompt="   "), "prompt is empty"),
        (dict(count=0), "Count must be 1 to 4"),
        (dict(count=9), "Count must be 1 to 4"),
        (dict(size="5:4"), "Unknown size '5:4': choose one of 1:1, 4:3"),
        (dict(steps=0), "Steps must be 1 to 100"),
        (dict(guidance=50.0), "Guidance must be 1 to 20"),
        (dict(pet_id=999), "no pet #999 in this server"),
        (dict(pet_id="other-guild"), "no pet #"),
        (dict(pet_id="untrained"), "Rex has no finished training yet"),
        (dict(pet_id="trained", checkpoint_id=999), "Thor has no checkpoint #999"),
        (dict(prompt="TOK at the beach", pet_id=None), "TOK but names no pet"),
        (dict(source_generation_id=1, variation_strength=0.01), "variation strength must be 0.05 to 1 (got 0.01"),
        (dict(source_generation_id=1, variation_strength=1.5), "variation strength must be 0.05 to 1 (got 1.5"),
        (dict(source_generation_id=1, steps=1, variation_strength=0.5), "none of the 1 steps would run"),
        (dict(source_generation_id=999), "no image 1 of generation #999 in this server"),
    ],
)
async def test_bad_requests_are_refused_in_plain_words(
    db, store: FileStore, settings, generator, lora_files, change, message
) -> None:
    data = DataDir(settings.data_dir)
    pets = {
        "trained": await add_trained_pet(db, store, "Thor", lora_files[0]),
        "untrained": await add_trained_pet(db, store, "Rex", None, status="running"),
        "other-guild": await add_trained_pet(db, store, "Felix", lora_files[1], guild="guild-2"),
    }
    values = dict(prompt="a photo of TOK cat", pet_id="trained", steps=2)
    values.update(change)
    if isinstance(values["pet_id"], str):
        values["pet_id"] = pets[values["pet_id"]].id
    with pytest.raises(GenerationError, match=message.replace("(", r"\(").replace("+", r"\+")):
        await generate_and_record(db, store, data, generator, GenerationRequest(**values), LOCAL_GUILD, "user-1")
    assert await generation_count(db) == 0
    assert await store.list("generations") == []


async def test_a_worker_that_painted_a_forgotten_pet_paints_the_next_pet_as_a_fresh_worker_does(
    db, store: FileStore, settings, tiny_model_dir: Path, lora_files
) -> None:
    data = DataDir(settings.data_dir)
    worker = Generator(load_tiny(tiny_model_dir), memory="full", size_scale=SMALL)

    async def paint(generator: Generator, pet: Pet) -> list[Image.Image]:
        request = GenerationRequest(prompt="TOK cat on a sofa", pet_id=pet.id, seed=5, steps=2)
        outcome = await generate_and_record(db, store, data, generator, request, LOCAL_GUILD, "user-9")
        return [Image.open(await store.local_path(file)) for file in outcome.files]

    thor = await add_trained_pet(db, store, "Thor", lora_files[0])
    thor_pictures = await paint(worker, thor)
    await forget_pet(db, store, thor)  # the newest pet, its run and checkpoint go
    loki = await add_trained_pet(db, store, "Loki", lora_files[1])
    loki_pictures = await paint(worker, loki)
    fresh = Generator(load_tiny(tiny_model_dir), memory="full", size_scale=SMALL)
    assert same(loki_pictures, await paint(fresh, loki))
    assert not same(loki_pictures, thor_pictures)


async def test_a_damaged_lora_file_is_a_plain_error_and_records_nothing(
    db, store: FileStore, settings, generator, lora_files
) -> None:
    data = DataDir(settings.data_dir)
    pet = await add_trained_pet(db, store, "Thor", lora_files[0])
    [run] = await runs.list_runs(db, pet.id)
    [checkpoint] = await runs.list_checkpoints(db, run.id)
    (await store.local_path(checkpoint.diffusers_file)).write_bytes(b"not a safetensors file")  # a damaged disk
    request = GenerationRequest(prompt="TOK cat", pet_id=pet.id, steps=1)
    fresh = Generator(generator.base, memory="full", size_scale=SMALL)  # nothing cached for this checkpoint id
    with pytest.raises(GenerationError, match="could not be loaded.*train the pet again") as refused:
        await generate_and_record(db, store, data, fresh, request, LOCAL_GUILD, "user-1")
    assert str(settings.data_dir) not in str(refused.value)  # the member reads it: no server paths
    assert await generation_count(db) == 0

    # A LoRA file gone from the store altogether: a plain error too, before any painting.
    await store.delete([checkpoint.diffusers_file])
    with pytest.raises(GenerationError, match=f"LoRA file of Thor's checkpoint #{checkpoint.id} is missing"):
        await generate_and_record(db, store, data, fresh, request, LOCAL_GUILD, "user-1")
    assert await generation_count(db) == 0
    assert await store.list("generations") == []


async def test_a_variation_is_recorded_with_its_source_and_stays_in_its_server(
    db, store: FileStore, settings, generator, lora_files
) -> None:
    data = DataDir(settings.data_dir)
    pet = await add_trained_pet(db, store, "Thor", lora_files[0])
    original = await generate_and_record(db, store, data, generator, GenerationRequest(
        prompt="TOK cat on a sofa", pet_id=pet.id, seed=3, steps=2, size="3:4", count=2), LOCAL_GUILD, "user-1")
    request = GenerationRequest(prompt="TOK cat on a sofa", pet_id=pet.id, seed=8, steps=3,
                                source_generation_id=original.generation_id, source_image=2)
    varied = await generate_and_record(db, store, data, generator, request, LOCAL_GUILD, "user-2")
    row = await get_generation(db, varied.generation_id)
    source = await get_generation(db, original.generation_id)
    assert (row.source_generation_id, row.source_image, row.variation_strength) == (source.id, 2, 0.6)
    assert (row.width, row.height) == (source.width, source.height) and row.seed == 8
    varied_path, source_path = await store.local_path(row.files[0]), await store.local_path(source.files[1])
    with Image.open(varied_path) as image, Image.open(source_path) as original_image:
        assert image.size == original_image.size
        assert not np.array_equal(pixels(image.convert("RGB")), pixels(original_image.convert("RGB")))
        parsed = parse_parameters(image.info[CHUNK]).settings
    assert parsed["Denoising strength"] == "0.6" and parsed["Seed"] == "8"
    assert parsed["Variation of"] == f"generation {source.id} image 2"

    # Another server cannot reach this server's pictures, nor can anyone vary an image that isn't there.
    felix = await add_trained_pet(db, store, "Felix", lora_files[1], guild="guild-2")
    for guild, pet_id, number in (("guild-2", felix.id, 1), (LOCAL_GUILD, pet.id, 3)):
        stranger = GenerationRequest(prompt="TOK", pet_id=pet_id, steps=3, source_generation_id=source.id,
                                     source_image=number)
        with pytest.raises(GenerationError, match=f"no image {number} of generation #{source.id} in this server"):
            await generate_and_record(db, store, data, generator, stranger, guild, "user-3")
    assert await generation_count(db) == 2

    # A source picture deleted from the store cannot be varied; it says so in plain words.
    await store.delete([source.files[0]])
    gone = GenerationRequest(prompt="TOK", pet_id=pet.id, steps=3, source_generation_id=source.id, source_image=1)
    with pytest.raises(GenerationError, match=f"Image 1 of generation #{source.id} was deleted or damaged"):
        await generate_and_record(db, store, data, generator, gone, LOCAL_GUILD, "user-3")
    assert await generation_count(db) == 2


def test_request_round_trips_through_a_job_payload() -> None:
    request = GenerationRequest(prompt="TOK", pet_id=3, seed=5, size="16:9", count=4, lora_scale=0.8,
                                source_generation_id=12, source_image=2, variation_strength=0.4)
    assert GenerationRequest.from_dict({**request.to_dict(), "discord": {"channel": 1}}) == request


async def test_cli_imagine_prints_paths_and_seeds(db, store: FileStore, settings, env, lora_files, tmp_path) -> None:
    """`pawtrait imagine` with a pet, copying to --out, at the configured resolution."""
    pet = await add_trained_pet(db, store, "Thor", lora_files[0])
    out = tmp_path / "out"
    completed = await asyncio.to_thread(
        pawtrait, "imagine", "a photo of TOK cat", "--pet", "thor", "--steps", "2", "--seed", "5",
        "--negative", "dark", "--out", str(out), env=env, cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    path_text, seed_text = completed.stdout.strip().split("\t")
    assert seed_text == "seed 5"
    copied = Path(path_text)
    assert copied.parent == out
    with Image.open(copied) as image:
        assert image.size == (settings.resolution, settings.resolution)  # 1:1 at PAWTRAIT_RESOLUTION=128
        assert parse_parameters(image.info[CHUNK]).settings["Lora"] == f"Thor ({pet.token})"
    generation_id = int(copied.name.split("-")[1])  # pawtrait-<generation>-...
    generation = await get_generation(db, generation_id)
    assert generation is not None and generation.seed == 5 and generation.pet_id == pet.id
    assert await store.get_bytes(generation.files[0]) == copied.read_bytes()
    assert "100%" in completed.stderr  # the progress bar ran to the end


    varied = await asyncio.to_thread(
        pawtrait, "imagine", "a photo of TOK cat", "--pet", "thor", "--steps", "4", "--seed", "9",
        "--vary", f"{generation_id}:1", "--variation-strength", "0.5", env=env, cwd=tmp_path,
    )
    assert varied.returncode == 0, varied.stderr
    varied_path, varied_seed = varied.stdout.strip().split("\t")
    assert varied_seed == "seed 9"
    assert Path(varied_path) == await store.local_path((await get_generation(db, generation_id + 1)).files[0])
    with Image.open(varied_path) as image:
        assert image.size == (settings.resolution, settings.resolution)  # the source's size
        assert parse_parameters(image.info[CHUNK]).settings["Denoising strength"] == "0.5"

    refused = await asyncio.to_thread(pawtrait, "imagine", "TOK", "--pet", "nobody", "--count", "2", env=env, cwd=tmp_path)
    assert refused.returncode == 1
    assert "no local pet called 'nobody' (local pets: Thor)" in refused.stderr


def test_the_generator_leaves_the_shared_modules_precision_alone(tiny_model_dir: Path) -> None:
    """The base is shared with training: wrapping it must not cast or move it (diffusers' from_pipe would)."""
    base = load_tiny(tiny_model_dir)
    for module in (base.pipe.unet, base.pipe.vae, base.pipe.text_encoder, base.pipe.text_encoder_2):
        module.to(torch.bfloat16)
    first = Generator(base, memory="full", size_scale=SMALL)
    assert {p.dtype for p in base.pipe.unet.parameters()} == {torch.bfloat16}
    assert first.pipe.unet is base.pipe.unet and first.pipe.scheduler is not base.pipe.scheduler


def test_with_compile_the_compiled_code_is_kept_in_the_data_folder(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted worker finds its compiled code there (33 s instead of 176 s to the first picture on an H100)."""
    environ = {key: value for key, value in os.environ.items() if key != "TORCHINDUCTOR_CACHE_DIR"}
    monkeypatch.setattr(os, "environ", environ)
    load_base_model(Settings(model=str(tiny_model_dir), vae=None, device="cpu", data_dir=tmp_path, compile=True))
    assert environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compile-cache")
    environ["TORCHINDUCTOR_CACHE_DIR"] = "/elsewhere"  # an operator's own choice wins
    load_base_model(Settings(model=str(tiny_model_dir), vae=None, device="cpu", data_dir=tmp_path, compile=True))
    assert environ["TORCHINDUCTOR_CACHE_DIR"] == "/elsewhere"


def test_compiled_blocks_run_only_for_shapes_compiled_ahead_and_paint_the_same(tiny_model_dir: Path) -> None:
    """A request never waits for the compiler: a shape not compiled yet runs eagerly and is queued;
    the idle-time `compile_ahead` compiles it a block variant at a time; from then on requests of
    that shape run the compiled code, compile nothing more and paint the same pixels."""
    from torch._dynamo.utils import counters

    compiled_runs = 0

    def counting(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        def run(*args: object) -> object:
            nonlocal compiled_runs
            compiled_runs += 1
            return graph.forward(*args)
        return run

    gen = Generator(load_tiny(tiny_model_dir), memory="full", size_scale=SMALL, compile=True, compile_backend=counting)
    odd = quick(size="16:9", count=2)

    def graphs() -> int:
        return counters["stats"]["unique_graphs"]

    before = graphs()
    eager = gen.generate(quick()).images, gen.generate(odd).images
    assert graphs() == before and compiled_runs == 0  # no compiling inside a request
    steps = 0
    while gen.compile_ahead():
        steps += 1
    assert steps > 3 and graphs() > before  # recorded, then one block variant per step
    compiled_now = graphs()
    again = gen.generate(quick()).images, gen.generate(odd).images
    assert graphs() == compiled_now and compiled_runs > 0  # ran compiled, compiled nothing new
    assert same(again[0], eager[0]) and same(again[1], eager[1])
    assert not gen.compile_ahead()


def test_cli_imagine_says_in_plain_words_when_the_model_does_not_load(env, tmp_path) -> None:
    completed = pawtrait("imagine", "a photo of a cat", "--steps", "1",
                         env={**env, "PAWTRAIT_MODEL": str(tmp_path / "nowhere")}, cwd=tmp_path)
    assert completed.returncode == 1 and "Traceback" not in completed.stderr, completed.stderr
    assert "could not load the base model" in completed.stderr and "Set PAWTRAIT_MODEL" in completed.stderr
