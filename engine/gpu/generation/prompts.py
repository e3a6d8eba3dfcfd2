"""Turning what the user typed into what the text encoders see.

TOK becomes the pet (engine.usecases.pet_prompts). CLIP reads at most 77 tokens; anything past
that is cut off, and the user is told so: that needs the tokenizers, so it lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from engine.usecases.pet_prompts import substitute_token
from storage.pets import Pet


@dataclass
class PreparedPrompt:
    prompt: str
    negative_prompt: str
    warnings: list[str] = field(default_factory=list)


def token_count(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """Tokens the text takes, including CLIP's start and end tokens."""
    return len(tokenizer(text, truncation=False, add_special_tokens=True)["input_ids"])


def truncation_warning(tokenizers: list[PreTrainedTokenizerBase], text: str, what: str) -> str | None:
    """A user-facing note when `text` is longer than the shortest tokenizer limit, else None."""
    for tokenizer in tokenizers:
        limit = tokenizer.model_max_length
        used = token_count(tokenizer, text)
        if used > limit:
            kept = tokenizer.convert_tokens_to_string(tokenizer.tokenize(text)[: limit - 2])
            return (
                f"the {what} is {used - 2} tokens long and SDXL reads only {limit - 2}; "
                f"everything after \"...{kept[-40:]}\" was ignored. Shorten it to keep those words."
            )
    return None


def prepare_prompts(
    prompt: str, negative_prompt: str, pet: Pet | None, tokenizers: list[PreTrainedTokenizerBase]
) -> PreparedPrompt:
    """The final prompt pair plus any warnings the user should see."""
    text = substitute_token(prompt.strip(), pet)
    warnings = []
    if pet is not None and pet.token not in text:
        warnings.append(
            f"the prompt has no TOK, so {pet.name} may not appear; write TOK where {pet.name} should be "
            f"(e.g. 'a painting of TOK {pet.class_noun}')"
        )
    for what, value in (("prompt", text), ("negative prompt", negative_prompt)):
        warning = truncation_warning(tokenizers, value, what) if value else None
        if warning:
            warnings.append(warning)
    return PreparedPrompt(prompt=text, negative_prompt=negative_prompt.strip(), warnings=warnings)
