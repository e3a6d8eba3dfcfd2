"""`TOK` in a prompt: the one place that finds it and puts the pet in its stead.

`TOK` stands for the chosen pet (the convention of Replicate's SDXL trainer). DreamBooth
learns "<token> <class noun>" ("a photo of qzxvk cat"), and the class noun matters a lot for
likeness (DINO 0.30 -> 0.74 in the paper), so a bare `TOK` becomes "<token> <noun>"; a `TOK`
already followed by the noun becomes just the token. Whole words only. The bot (whether a
prompt needs a pet), training (its validation prompts) and generation all read TOK here.
"""

from __future__ import annotations

import re

from engine.usecases.generation.request import GenerationError
from storage.pets import Pet

_TOK = re.compile(r"\bTOK\b")


def mentions_pet(prompt: str) -> bool:
    """Whether the prompt writes TOK, i.e. needs a pet."""
    return _TOK.search(prompt) is not None


def substitute_token(prompt: str, pet: Pet | None) -> str:
    """Each `TOK` as the pet's token and class noun: 'TOK on a sofa' and 'TOK cat on a sofa'
    -> 'qzxvk cat on a sofa'. Raises GenerationError for a TOK without a pet."""
    if not mentions_pet(prompt):
        return prompt
    if pet is None:
        raise GenerationError("The prompt uses TOK but names no pet: choose a pet, or leave TOK out for a plain picture.")
    noun_follows = re.compile(rf"\s+{re.escape(pet.class_noun)}(?!\w)", re.IGNORECASE)

    def replace(match: re.Match[str]) -> str:
        if noun_follows.match(prompt, match.end()):
            return pet.token
        return f"{pet.token} {pet.class_noun}"

    return _TOK.sub(replace, prompt)
