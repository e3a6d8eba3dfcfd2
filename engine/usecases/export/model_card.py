"""The model card (README.md) of an exported LoRA, laid out as diffusers' DreamBooth LoRA SDXL
script writes one (`save_model_card`): YAML front matter the Hugging Face Hub reads (base model,
licence, tags, instance prompt, a widget per validation image), then the trigger words, how to
load it, and what Pawtrait adds: the training settings, the scores, and each validation prompt
before and after training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import yaml

from engine.usecases.export.download import export_command
from engine.usecases.export.naming import lora_stem, trigger_words
from engine.usecases.training.params import TrainingParams
from storage.pets import Pet

# SDXL's licence; a LoRA of it is a derivative under the same terms.
LICENSE = "openrail++"
TAGS = (
    "text-to-image", "diffusers-training", "diffusers", "lora", "template:sd-lora",
    "stable-diffusion-xl", "stable-diffusion-xl-diffusers", "dreambooth",
)
# The DreamBooth paper's measures, by the names the validation rows store them under.
SCORE_LABELS = {"dino": "DINO", "clip_i": "CLIP-I", "clip_t": "CLIP-T"}


@dataclass(frozen=True)
class CardImage:
    file: str  # relative to the card, e.g. 'images/step300_0.png'
    prompt: str
    seed: int
    step: int


@dataclass(frozen=True)
class CardFacts:
    pet: Pet
    run_id: int
    step: int
    params: TrainingParams
    base_model: str  # as the card names it: a hub id, or a local folder's name
    vae: str | None
    lora_file: str  # the weights' file name beside the card
    kohya: bool  # the single file A1111/ComfyUI load; else the diffusers format
    images: list[CardImage]  # the checkpoint step's validation images and step 0's


def model_card(facts: CardFacts, scores: dict[int, dict[str, float]] | None = None) -> str:
    """README.md's text. `scores`: the mean of each measure (SCORE_LABELS' keys) by step, 0 = the base model."""
    sections = [
        _description(facts), _trigger(facts), _diffusers_use(facts), _ui_use(facts), _settings(facts),
        _scores(facts, scores) if scores else "", _comparison(facts),
    ]
    return f"---\n{_front_matter(facts)}---\n\n" + "\n".join(section for section in sections if section)


def _front_matter(facts: CardFacts) -> str:
    shown = [image for image in facts.images if image.step == facts.step]
    data: dict = {
        "base_model": facts.base_model,
        "license": LICENSE,
        "instance_prompt": facts.pet.instance_prompt,
        "tags": list(TAGS),
    }
    if shown:
        data["widget"] = [{"text": image.prompt, "output": {"url": image.file}} for image in shown]
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _description(facts: CardFacts) -> str:
    pet = facts.pet
    vae = f"\nSpecial VAE used for training: {facts.vae}.\n" if facts.vae else ""
    return f"""# SDXL LoRA DreamBooth - {pet.name}

<Gallery />

## Model description

These are LoRA adaption weights of {pet.name}, a {pet.class_noun}, for {facts.base_model}: the checkpoint of step \
{facts.step} of {facts.params.steps} of Pawtrait's training #{facts.run_id}.

The weights were trained using [DreamBooth](https://dreambooth.github.io/) on the UNet's attention layers; the text \
encoders were not trained.
{vae}"""


def _trigger(facts: CardFacts) -> str:
    return f"""## Trigger words

You should use `{trigger_words(facts.pet)}` to trigger the image generation, e.g. "{facts.pet.instance_prompt}".
"""


def _diffusers_use(facts: CardFacts) -> str:
    return f"""## Use it with the [🧨 diffusers library](https://github.com/huggingface/diffusers)

```py
from diffusers import AutoPipelineForText2Image
import torch

pipeline = AutoPipelineForText2Image.from_pretrained({_py(facts.base_model)}, torch_dtype=torch.float16).to("cuda")
pipeline.load_lora_weights("path/to/this/folder", weight_name={_py(facts.lora_file)})
image = pipeline({_py(facts.pet.instance_prompt)}).images[0]
```
"""


def _ui_use(facts: CardFacts) -> str:
    if not facts.kohya:
        return f"""## Use it in AUTOMATIC1111, ComfyUI, SD.Next, Invoke

This folder holds the diffusers format. For the single file those tools load, export the kohya format:
`{export_command(facts.pet, facts.step)} --format kohya`
"""
    return f"""## Use it in AUTOMATIC1111, ComfyUI, SD.Next, Invoke

- Put `{facts.lora_file}` into your `models/Lora` folder.
- AUTOMATIC1111: add `<lora:{lora_stem(facts.pet, facts.step)}:1>` to a prompt that says `{trigger_words(facts.pet)}`.
- ComfyUI: load it with a *Load LoRA* node after the SDXL checkpoint.
"""


def _settings(facts: CardFacts) -> str:
    params = facts.params
    prior = (
        f"on: {params.class_images} class images, loss weight {params.prior_loss_weight:g}"
        if params.prior_preservation else "off"
    )
    rows = [
        ("steps", f"{facts.step} of {params.steps}"),
        ("LoRA rank", str(params.rank)),
        ("LoRA alpha", f"{params.lora_alpha:g}"),
        ("learning rate", f"{params.learning_rate:g} ({params.lr_scheduler}, {params.lr_warmup_steps} warm-up steps)"),
        ("resolution", f"{params.resolution} × {params.resolution}"),
        ("images per step",
         f"{params.images_per_step} (batch {params.batch_size} × accumulation {params.gradient_accumulation})"),
        ("prior preservation", prior),
        ("min-SNR gamma", f"{params.snr_gamma:g}" if params.snr_gamma else "off"),
        ("horizontal flips", "on" if params.flip else "off"),
        ("target modules", ", ".join(params.target_modules)),
        ("seed", str(params.seed)),
    ]
    return "## Training settings\n\n" + _table(("setting", "value"), rows)


def _scores(facts: CardFacts, scores: dict[int, dict[str, float]]) -> str:
    names = [name for name in SCORE_LABELS if any(name in row for row in scores.values())]
    names += sorted({name for row in scores.values() for name in row} - set(names))
    rows = [
        ("base model (step 0)" if step == 0 else f"step {step}",
         *(f"{scores[step][name]:.3f}" if name in scores[step] else "" for name in names))
        for step in sorted(scores)
    ]
    return (
        "## Scores\n\nThe mean over each step's validation images. DINO and CLIP-I: how much the pictures look "
        f"like {facts.pet.name}'s photos; CLIP-T: how closely they follow their prompt (the DreamBooth paper's "
        "measures).\n\n"
        + _table(("checkpoint", *(SCORE_LABELS.get(name, name) for name in names)), rows)
    )


def _comparison(facts: CardFacts) -> str:
    if not facts.images:
        return ""
    cells: dict[tuple[str, int], dict[int, str]] = {}
    for image in facts.images:
        cells.setdefault((image.prompt, image.seed), {})[image.step] = f"![]({image.file})"
    rows = [
        (_cell(prompt), str(seed), by_step.get(0, ""), by_step.get(facts.step, ""))
        for (prompt, seed), by_step in cells.items()
    ]
    return (
        "## Validation images\n\nEach prompt with the same seed before training (the base model) and at step "
        f"{facts.step}.\n\n"
        + _table(("prompt", "seed", "before training", f"step {facts.step}"), rows)
    )


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = [header, tuple("---" for _ in header), *rows]
    return "".join(f"| {' | '.join(line)} |\n" for line in lines)


def _py(text: str) -> str:
    """A Python string literal of `text` (JSON's escapes are Python's)."""
    return json.dumps(text, ensure_ascii=False)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
