"""Taking a LoRA away: the fp16 A1111/ComfyUI file (`/lora`), `pawtrait export` with its model card,
and the plain words when there is nothing to take. One pet trained for real, shared by the module."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import StableDiffusionXLPipeline
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.numpy import load_file

from config.settings import Settings
from engine.gpu.generation.generator import Generator
from engine.gpu.models import load_base_model
from engine.gpu.training.service import execute_run
from engine.usecases.export.choice import ExportError
from engine.usecases.export.download import download_caption, export_command, prepare_download, too_big_message
from engine.usecases.export.folder import export_lora, validation_scores
from engine.usecases.training import TrainingParams, create_run
from storage import runs
from storage.connect import open_storage
from storage.files import DataDir
from storage.pets import LOCAL_GUILD, Pet, find_pet

from cli_helpers import Completed, pawtrait
from conftest import settings_env
from training_helpers import pet_with_photos

REPO = Path(__file__).parent.parent
# Rank 4 with alpha 2: a LoRA scale other than 1, which a file that lost its alpha would get wrong.
PARAMS = TrainingParams(
    steps=2, rank=4, alpha=2, checkpoint_every=1, validate_every=2, resolution=64,
    gradient_accumulation=1,
)


@dataclass(frozen=True)
class Trained:
    settings: Settings
    run_id: int


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Thor trained for 2 steps (checkpoints at 1 and 2, validation images at 0 and 2); Luna never trained."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("export") / "data", model=str(tiny_model_dir), vae=None, device="cpu",
        resolution=64,
    )

    async def train() -> int:
        db, store = await open_storage(settings)
        try:
            thor = await pet_with_photos(db, store, "Thor")
            await pet_with_photos(db, store, "Luna")
            run_id = await create_run(db, store, thor, PARAMS)
            generator = Generator(load_base_model(settings))
            outcome = await execute_run(db, store, DataDir(settings.data_dir), generator, run_id)
            assert outcome.status == "succeeded", outcome.error
            return run_id
        finally:
            await db.close()

    return Trained(settings, asyncio.run(train()))


def export(trained: Trained, cwd: Path, *args: str) -> Completed:
    return pawtrait("export", *args, env=settings_env(trained.settings), cwd=cwd)


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def lora_deltas(pipeline: StableDiffusionXLPipeline, adapter: str) -> dict[str, torch.Tensor]:
    """What the adapter adds to each UNet weight (scale × up @ down), by module."""
    return {
        name: module.get_delta_weight(adapter)
        for name, module in pipeline.unet.named_modules()
        if isinstance(module, LoraLayer) and adapter in module.lora_A
    }


async def test_the_download_is_the_stored_kohya_lora_in_fp16_with_its_metadata(trained: Trained) -> None:
    db, store = await open_storage(trained.settings)
    try:
        pet = await find_pet(db, LOCAL_GUILD, "Thor")
        download = await prepare_download(db, store, pet, base_model=trained.settings.model)
        checkpoint = (await runs.list_checkpoints(db, trained.run_id))[-1]
        stored = load_file(await store.local_path(checkpoint.kohya_key))
        again = await prepare_download(db, store, pet, base_model=trained.settings.model)
        earlier = await prepare_download(db, store, pet, 1, base_model=trained.settings.model)
    finally:
        await db.close()

    # No vote and no pick: the last checkpoint, named for people and for the pet's token.
    assert (download.step, download.trigger) == (2, f"{pet.token} cat")
    assert download.filename == f"thor-{pet.token}-step2.safetensors"
    assert download.size == download.path.stat().st_size
    fp16 = load_file(download.path)
    assert fp16.keys() == stored.keys() and {value.dtype for value in fp16.values()} == {np.dtype(np.float16)}
    for key, value in stored.items():
        np.testing.assert_allclose(fp16[key].astype(np.float32), value, rtol=2**-11, atol=2**-25, err_msg=key)

    with safe_open(download.path, "numpy") as handle:
        metadata = handle.metadata()
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert metadata["ss_sd_model_name"] == Path(trained.settings.model).name
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert metadata["modelspec.trigger_phrase"] == download.trigger
    assert json.loads(metadata["ss_tag_frequency"]) == {f"1_{download.trigger}": {download.trigger: 3}}
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("4", "2.0")
    assert (metadata["ss_steps"], metadata["ss_max_train_steps"]) == ("2", "2")
    assert (metadata["ss_resolution"], metadata["modelspec.resolution"]) == ("(64, 64)", "64x64")
    assert metadata["ss_learning_rate"] == "0.0001"
    assert metadata["ss_output_name"] == download.filename.removesuffix(".safetensors")
    data = download.path.read_bytes()
    tensors = data[8 + int.from_bytes(data[:8], "little"):]
    assert metadata["modelspec.hash_sha256"] == f"0x{hashlib.sha256(tensors).hexdigest()}"

    # Made once, kept beside the checkpoint; another step is another file.
    assert again == download and again.path.stat().st_mtime_ns == download.path.stat().st_mtime_ns
    assert (earlier.step, earlier.filename) == (1, f"thor-{pet.token}-step1.safetensors")
    assert earlier.path != download.path


async def test_both_exports_load_in_diffusers_to_the_same_unet_weights(
    trained: Trained, tiny_model_dir: Path, tmp_path: Path
) -> None:
    kohya = await asyncio.to_thread(export, trained, tmp_path, "Thor", "--out", str(tmp_path / "kohya"))
    diffusers = await asyncio.to_thread(
        export, trained, tmp_path, "Thor", "--step", "2", "--format", "diffusers", "--out", str(tmp_path / "diffusers")
    )
    assert kohya.returncode == 0 and diffusers.returncode == 0, kohya.stderr + diffusers.stderr
    db, store = await open_storage(trained.settings)
    try:
        pet = await find_pet(db, LOCAL_GUILD, "Thor")
        checkpoint = (await runs.list_checkpoints(db, trained.run_id))[-1]
        stored_diffusers = (await store.local_path(checkpoint.diffusers_key)).read_bytes()
    finally:
        await db.close()
    kohya_file = tmp_path / "kohya" / f"thor-{pet.token}-step2.safetensors"
    assert str(kohya_file) in kohya.stdout and f"'{pet.token} cat'" in kohya.stdout
    assert (tmp_path / "diffusers" / "pytorch_lora_weights.safetensors").read_bytes() == stored_diffusers

    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)
    pipeline.load_lora_weights(str(tmp_path / "diffusers"), adapter_name="diffusers")  # the folder, as the card says
    pipeline.load_lora_weights(str(kohya_file), adapter_name="kohya")
    expected, loaded = lora_deltas(pipeline, "diffusers"), lora_deltas(pipeline, "kohya")
    assert expected and loaded.keys() == expected.keys()
    for name, delta in expected.items():
        assert delta.abs().max() > 0, name
        torch.testing.assert_close(loaded[name], delta, rtol=0, atol=1e-2 * delta.abs().max().item(), msg=name)


async def test_the_card_is_the_diffusers_scripts_with_images_settings_and_scores(
    trained: Trained, tmp_path: Path
) -> None:
    db, store = await open_storage(trained.settings)
    try:
        pet = await find_pet(db, LOCAL_GUILD, "Thor")
        exported = await export_lora(
            db, store, pet, tmp_path, base_model=trained.settings.model, vae="madebyollin/sdxl-vae-fp16-fix",
            scores={0: {"dino": 0.41, "clip_i": 0.62, "clip_t": 0.33}, 2: {"dino": 0.7, "clip_i": 0.8, "clip_t": 0.31}},
        )
        shown = await runs.list_validation_images(db, trained.run_id, 2)
    finally:
        await db.close()
    card = exported.card.read_text()
    front = front_matter(card)
    assert front["base_model"] == Path(trained.settings.model).name and front["license"] == "openrail++"
    assert front["instance_prompt"] == f"a photo of {pet.token} cat"
    assert {"text-to-image", "diffusers", "lora", "template:sd-lora", "stable-diffusion-xl"} <= set(front["tags"])
    assert [entry["text"] for entry in front["widget"]] == [image.prompt for image in shown]
    assert all((tmp_path / entry["output"]["url"]).is_file() for entry in front["widget"])
    assert len(exported.images) == 6 and all(path.is_file() for path in exported.images)  # steps 0 and 2
    for line in (
        "# SDXL LoRA DreamBooth - Thor", f"You should use `{pet.token} cat`", f"<lora:thor-{pet.token}-step2:1>",
        "| LoRA rank | 4 |", "| LoRA alpha | 2 |", "| learning rate | 0.0001 (constant, 0 warm-up steps) |",
        "| resolution | 64 × 64 |", "| prior preservation | off |", "| seed | 0 |",
        "| checkpoint | DINO | CLIP-I | CLIP-T |", "| base model (step 0) | 0.410 | 0.620 | 0.330 |",
        "| step 2 | 0.700 | 0.800 | 0.310 |", "madebyollin/sdxl-vae-fp16-fix",
        f"| a photo of {pet.token} cat | 42 | ![](images/step0_0.png) | ![](images/step2_0.png) |",
    ):
        assert line in card, line

    # Without scores there is no score table; with the score columns on the rows, their means.
    plain = await asyncio.to_thread(
        export, trained, tmp_path, "Thor", "--format", "diffusers", "--out", str(tmp_path / "d")
    )
    assert plain.returncode == 0, plain.stderr
    assert "## Scores" not in (tmp_path / "d" / "README.md").read_text()
    assert "--format kohya" in (tmp_path / "d" / "README.md").read_text()

    @dataclass
    class Scored:
        step: int
        dino: float | None = None
        clip_t: float | None = None

    assert validation_scores(shown) is None
    means = validation_scores([Scored(0, 0.5, 0.3), Scored(2, 0.6), Scored(2, 0.8, 0.2)])
    assert means == {0: {"dino": 0.5, "clip_t": 0.3}, 2: {"dino": pytest.approx(0.7), "clip_t": 0.2}}


async def test_nothing_to_take_is_said_in_plain_words(trained: Trained, tmp_path: Path) -> None:
    nobody = await asyncio.to_thread(export, trained, tmp_path, "Rex", "--out", str(tmp_path))
    assert nobody.returncode == 1
    assert "there is no pet called 'Rex' in guild 'local' (pets there: Luna, Thor)" in nobody.stderr
    untrained = await asyncio.to_thread(export, trained, tmp_path, "Luna", "--out", str(tmp_path))
    assert untrained.returncode == 1
    assert "Luna has no trained checkpoint yet. Train Luna first, then take its LoRA." in untrained.stderr
    wrong = await asyncio.to_thread(export, trained, tmp_path, "Thor", "--step", "7", "--out", str(tmp_path))
    assert wrong.returncode == 1 and "Thor has no checkpoint at step 7. Saved steps: 1, 2." in wrong.stderr
    assert not list(tmp_path.iterdir())  # nothing written

    db, store = await open_storage(trained.settings)
    try:
        with pytest.raises(ExportError, match="Luna has no trained checkpoint yet"):
            await prepare_download(db, store, await find_pet(db, LOCAL_GUILD, "Luna"), 3, base_model="m")
        with pytest.raises(ExportError, match=r"no checkpoint at step 7\. Saved steps: 1, 2\.$"):
            await prepare_download(db, store, await find_pet(db, LOCAL_GUILD, "Thor"), 7, base_model="m")
    finally:
        await db.close()


async def test_too_big_for_discord_names_the_command_that_writes_it(trained: Trained, tmp_path: Path) -> None:
    db, store = await open_storage(trained.settings)
    try:
        pet = await find_pet(db, LOCAL_GUILD, "Thor")
        download = await prepare_download(db, store, pet, 2, base_model=trained.settings.model)
    finally:
        await db.close()
    message = too_big_message(pet, download, limit=10 * 2**20)
    assert message.startswith(f"Thor's LoRA from step 2 is {download.size / 2**20:.1f} MB, more than the 10 MB")
    command = message.split("`")[1]
    assert command == "pawtrait export Thor --step 2 --out DIR"
    argv = shlex.split(command.replace("DIR", str(tmp_path / "out")))
    done = await asyncio.to_thread(export, trained, tmp_path, *argv[2:])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / download.filename).read_bytes() == download.path.read_bytes()

    guild_pet = dataclasses.replace(pet, name="Mr Whiskers", guild_id="123456789")
    assert export_command(guild_pet, 300) == "pawtrait export 'Mr Whiskers' --step 300 --guild 123456789 --out DIR"
    caption = download_caption(pet, download)
    assert download.filename in caption and f"`{pet.token} cat`" in caption
    assert f"<lora:thor-{pet.token}-step2:1>" in caption


async def test_the_bot_prepares_a_download_without_torch(trained: Trained) -> None:
    """The bot process never imports torch: making the file (not only importing the module) stays torch-free."""
    db, store = await open_storage(trained.settings)
    try:
        checkpoint = (await runs.list_checkpoints(db, trained.run_id))[0]
        await store.delete([f"{checkpoint.path}/download-fp16.safetensors"])  # made anew in the subprocess
    finally:
        await db.close()
    script = """
import asyncio, sys
from config.settings import Settings
from engine.usecases.export.download import prepare_download
from storage.connect import open_storage
from storage.pets import LOCAL_GUILD, find_pet

async def main():
    settings = Settings.from_env()
    db, store = await open_storage(settings)
    pet = await find_pet(db, LOCAL_GUILD, "Thor")
    download = await prepare_download(db, store, pet, 1, base_model=settings.model)
    await db.close()
    print(download.filename, download.size)

asyncio.run(main())
assert "torch" not in sys.modules, "torch was imported"
"""
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], env=settings_env(trained.settings), cwd=REPO,
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "-step1.safetensors" in done.stdout


def test_a_pet_has_its_own_download_name() -> None:
    pet = Pet(1, LOCAL_GUILD, "owner", "Señor Miau!", "qzxvk", "cat", None, "2025-01-01T00:00:00Z")
    from engine.usecases.export.naming import download_filename

    assert download_filename(pet, 300) == "senor-miau-qzxvk-step300.safetensors"
