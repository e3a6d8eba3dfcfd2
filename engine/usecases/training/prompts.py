"""The words a run trains and validates with.

DreamBooth binds a rare token to the pet inside its class ("a photo of qzxvk cat"): the
class noun lets the model start from everything it knows about cats. Users write `TOK`
for their pet; it is replaced with the pet's token here, as a whole word only.
"""

from __future__ import annotations

import re

from storage.pets import Pet

_TOK = re.compile(r"\bTOK\b")

CREATIVE_PROMPTS = (
    "an oil painting of TOK {noun} in the style of van gogh, swirling starry sky",
    "TOK {noun} wearing a tiny astronaut helmet, floating in space, digital art",
)


def instance_prompt(pet: Pet) -> str:
    return pet.instance_prompt


def class_prompt(class_noun: str) -> str:
    """What the prior-preservation images show: any member of the class."""
    return f"a photo of {class_noun.strip().lower()}"


def expand_token(prompt: str, pet: Pet) -> str:
    """'TOK cat on a skateboard' -> 'qzxvk cat on a skateboard'."""
    return _TOK.sub(pet.token, prompt)


def validation_prompt_count(custom: tuple[str, ...] = ()) -> int:
    """How many pictures a validation round paints."""
    return len(custom) or 1 + len(CREATIVE_PROMPTS)


def validation_prompts(pet: Pet, custom: tuple[str, ...] = ()) -> list[str]:
    """The run's validation prompts with TOK expanded; the default is the instance prompt plus two creative ones."""
    if custom:
        return [expand_token(prompt, pet) for prompt in custom]
    return [instance_prompt(pet)] + [expand_token(p.format(noun=pet.class_noun), pet) for p in CREATIVE_PROMPTS]
