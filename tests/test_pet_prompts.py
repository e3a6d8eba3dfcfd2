"""TOK in a prompt (engine.usecases.pet_prompts): one reading for /imagine and for a training's validation prompts."""

from __future__ import annotations

import pytest

from engine.usecases.generation.request import GenerationError
from engine.usecases.pet_prompts import mentions_pet, substitute_token
from engine.usecases.training.prompts import validation_prompts
from storage.pets import LOCAL_GUILD, Pet


def pet(class_noun: str = "cat") -> Pet:
    return Pet(id=1, guild_id=LOCAL_GUILD, owner_id="o", name="Thor", token="zqxjv", class_noun=class_noun,
               active_checkpoint_id=None, created_at="")


def test_tok_is_a_whole_word() -> None:
    assert mentions_pet("a photo of TOK") and mentions_pet("TOK, asleep")
    assert not mentions_pet("a TOKEN of love") and not mentions_pet("a photo of tok") and not mentions_pet("MyTOK")


def test_tok_becomes_the_token_and_the_class_noun_once() -> None:
    thor = pet()
    assert substitute_token("TOK on a sofa", thor) == "zqxjv cat on a sofa"
    assert substitute_token("TOK cat on a sofa", thor) == "zqxjv cat on a sofa"
    assert substitute_token("TOK Cat on a sofa", thor) == "zqxjv Cat on a sofa"  # the user's spelling stays
    assert substitute_token("TOK cats and TOK", thor) == "zqxjv cat cats and zqxjv cat"
    assert substitute_token("a photo of a cat", None) == "a photo of a cat"
    with pytest.raises(GenerationError, match="TOK but names no pet"):
        substitute_token("a photo of TOK", None)


def test_a_class_of_several_words_is_not_written_twice() -> None:
    retriever = pet("golden retriever")
    assert substitute_token("TOK golden retriever in snow", retriever) == "zqxjv golden retriever in snow"
    assert substitute_token("TOK golden hour", retriever) == "zqxjv golden retriever golden hour"
    assert validation_prompts(retriever)[2].startswith("zqxjv golden retriever wearing")
