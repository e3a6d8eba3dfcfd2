"""The DreamBench protocol of the DreamBooth paper, on a folder laid out like its public dataset.

The dataset (github.com/google/dreambooth, `dataset/`): one folder of photos per subject
(`dataset/<subject>/*.jpg`) and `prompts_and_classes.txt`, which lists `subject_name,class`
pairs under "Classes", then two lists of 25 prompt templates, "Object Prompts" and "Live
Subject Prompts", one per line as `'a {0} {1} in the snow'.format(unique_token, class_token)`.
The live subjects are the cats and dogs.

For each subject and prompt, N pictures (the paper: 4) are painted with that subject's LoRA;
each is scored against all the subject's photos (DINO, CLIP-I) and against its prompt with
the token left out (CLIP-T). A subject's numbers are means over its pictures, the benchmark's
the mean over subjects, as the paper's Table 1 reports them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.gpu.generation.generator import Generator, PetLora
from engine.gpu.scoring.scorer import Scorer, Subject
from engine.usecases.generation.request import MAX_COUNT, GenerationRequest
from engine.usecases.scoring.prompts import without_token
from storage.scores import ImageScores

PROMPTS_FILE = "prompts_and_classes.txt"
LIVE_CLASSES = ("cat", "dog")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_TEMPLATE = re.compile(r"^'(.+)'\.format\(\s*unique_token\s*,\s*class_token\s*\),?$")
_CLASS_LINE = re.compile(r"^([\w-]+),([^,]+)$")


class DreamBenchError(ValueError):
    """The folder is not laid out like the dataset, or a LoRA is missing; the message says what to fix."""


@dataclass(frozen=True)
class Benchmark:
    folder: Path  # the one that holds prompts_and_classes.txt and a folder per subject
    classes: dict[str, str]  # subject -> class noun
    object_prompts: list[str]  # templates: {0} the unique token, {1} the class noun
    live_prompts: list[str]

    def templates(self, subject: str) -> list[str]:
        return self.live_prompts if self.classes[subject] in LIVE_CLASSES else self.object_prompts

    def photos(self, subject: str) -> list[Path]:
        folder = self.folder / subject
        photos = sorted(p for p in folder.glob("*") if p.suffix.lower() in PHOTO_SUFFIXES) if folder.is_dir() else []
        if not photos:
            raise DreamBenchError(f"there are no photos of {subject} in {folder}")
        return photos


def read_benchmark(folder: Path) -> Benchmark:
    """The dataset in `folder` (or in its `dataset/` subfolder, as the repository has it)."""
    if not (folder / PROMPTS_FILE).is_file() and (folder / "dataset" / PROMPTS_FILE).is_file():
        folder = folder / "dataset"
    path = folder / PROMPTS_FILE
    if not path.is_file():
        raise DreamBenchError(
            f"{folder} has no {PROMPTS_FILE}: point --dreambench at the dataset folder of github.com/google/dreambooth"
        )
    classes: dict[str, str] = {}
    prompts: dict[str, list[str]] = {"object": [], "live": []}
    section = None
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        lowered = line.lower()
        if lowered in ("classes", "object prompts", "live subject prompts"):
            section = {"classes": "classes", "object prompts": "object", "live subject prompts": "live"}[lowered]
        elif section == "classes" and (match := _CLASS_LINE.match(line)) and match.group(1) != "subject_name":
            classes[match.group(1)] = match.group(2).strip()
        elif section in prompts and (match := _TEMPLATE.match(line)):
            prompts[section].append(match.group(1))
    if not classes or not prompts["object"] or not prompts["live"]:
        raise DreamBenchError(
            f"{path} does not list subjects under 'Classes' and prompts under 'Object Prompts' and "
            "'Live Subject Prompts' as the dataset's file does"
        )
    return Benchmark(folder, classes, prompts["object"], prompts["live"])


@dataclass(frozen=True)
class SubjectResult:
    subject: str
    class_noun: str
    pictures: int
    dino: float
    clip_i: float
    clip_t: float


def mean_of(results: list[SubjectResult]) -> tuple[float, float, float]:
    """(DINO, CLIP-I, CLIP-T) averaged over subjects, as the paper's table."""
    count = len(results)
    return (
        sum(r.dino for r in results) / count,
        sum(r.clip_i for r in results) / count,
        sum(r.clip_t for r in results) / count,
    )


def evaluate_subject(
    generator: Generator,
    scorer: Scorer,
    benchmark: Benchmark,
    subject: str,
    lora: PetLora,
    *,
    token: str,
    pictures_per_prompt: int,
    steps: int,
    seed: int,
    on_prompt: Callable[[int, int], None] = lambda done, total: None,
) -> SubjectResult:
    """Paint and score every prompt of one subject with its LoRA (raises if the scoring models cannot load)."""
    class_noun = benchmark.classes[subject]
    reference = Subject(benchmark.photos(subject))
    templates = benchmark.templates(subject)
    scores: list[ImageScores] = []
    for index, template in enumerate(templates):
        prompt = template.format(token, class_noun)
        for start in range(0, pictures_per_prompt, MAX_COUNT):
            request = GenerationRequest(
                prompt=prompt, steps=steps, seed=seed + index * pictures_per_prompt + start,
                count=min(MAX_COUNT, pictures_per_prompt - start),
            )
            result = generator.generate(request, lora=lora)
            texts = [without_token(prompt, token, class_noun)] * len(result.images)
            measured = scorer.score(reference, result.images, texts, generator.base.device)
            if measured is None:
                raise DreamBenchError("the scoring models could not be loaded (see the warning above)")
            scores += measured
        on_prompt(index + 1, len(templates))
    count = len(scores)
    return SubjectResult(
        subject=subject,
        class_noun=class_noun,
        pictures=count,
        dino=sum(s.dino for s in scores) / count,
        clip_i=sum(s.clip_i for s in scores) / count,
        clip_t=sum(s.clip_t for s in scores) / count,
    )


def lora_file(path: Path) -> Path:
    """The LoRA weights at `path`: a .safetensors file, or a folder with the diffusers file (or one .safetensors)."""
    if path.is_file() and path.suffix == ".safetensors":
        return path
    if path.is_dir():
        candidates = [path / "pytorch_lora_weights.safetensors"] + sorted(path.glob("*.safetensors"))
        found = [candidate for candidate in candidates if candidate.is_file()]
        if found:
            return found[0]
    raise DreamBenchError(f"{path} is neither a .safetensors LoRA nor a folder with one")


def loras_in(folder: Path, subjects: list[str]) -> dict[str, Path]:
    """The LoRAs of a folder named by subject (<subject>.safetensors or <subject>/), for the subjects it has."""
    found = {}
    for subject in subjects:
        for candidate in (folder / f"{subject}.safetensors", folder / subject):
            if candidate.exists():
                found[subject] = lora_file(candidate)
                break
    if not found:
        raise DreamBenchError(f"{folder} has no LoRA named after a subject (e.g. {subjects[0]}.safetensors)")
    return found
