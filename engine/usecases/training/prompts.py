"""The words a run trains and validates with.

DreamBooth binds a rare token to the pet inside its class ("a photo of qzxvk cat"): the
class noun lets the model start from everything it knows about cats. Validation prompts write
`TOK` for the pet, as `/imagine`'s do (engine.usecases.pet_prompts).
"""

from __future__ import annotations

from engine.usecases.pet_prompts import substitute_token
from storage.pets import Pet

CREATIVE_PROMPTS = (
    "an oil painting of TOK {noun} in the style of van gogh, swirling starry sky",
    "TOK {noun} wearing a tiny astronaut helmet, floating in space, digital art",
)


def instance_prompt(pet: Pet) -> str:
    return pet.instance_prompt


def class_prompt(class_noun: str) -> str:
    """What the prior-preservation images show: any member of the class."""
    return f"a photo of {class_noun.strip().lower()}"


def validation_prompt_count(custom: tuple[str, ...] = ()) -> int:
    """How many pictures a validation round paints."""
    return len(custom) or 1 + len(CREATIVE_PROMPTS)


def validation_prompts(pet: Pet, custom: tuple[str, ...] = ()) -> list[str]:
    """The run's validation prompts with TOK expanded; the default is the instance prompt plus two creative ones."""
    if custom:
        return [substitute_token(prompt, pet) for prompt in custom]
    return [instance_prompt(pet)] + [substitute_token(p.format(noun=pet.class_noun), pet) for p in CREATIVE_PROMPTS]
