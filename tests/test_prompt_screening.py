"""Prompt screening (engine.moderation.prompts): what a member typing /imagine gets refused, and what passes."""

from __future__ import annotations

import pytest

from engine.moderation.prompts import PromptRefused, block_word_problem, screen_prompt

EXPLICIT = ["a nude photo of TOK", "TOK cat, NSFW", "porn", "a naked man next to TOK"]
EVASIONS = ["s.e.x with TOK", "S E X", "s-e-x", "Séx", "NÜDE TOK", "n u d e", "p0rn", "$ex", "5EX", "d1ck", "n_u_d_e"]
INNOCENT = [
    "a classic portrait of TOK", "TOK in Sussex", "TOK and a cockatiel", "Essex countryside", "Middlesex",
    "Scunthorpe", "cumulus clouds over TOK", "a peacock", "an analysis of TOK", "a therapist's cat", "sextant",
    "Charles Dickens reading to TOK", "Hancock", "a kid playing with TOK dog", "a baby and TOK kitten",
    "TOK on a 1024 pixel canvas", "a grape", "a cat's exit",
]


@pytest.mark.parametrize("prompt", EXPLICIT + EVASIONS)
def test_explicit_prompts_are_refused_outside_age_restricted_channels_only(prompt: str) -> None:
    refused = screen_prompt(prompt, age_restricted=False)
    assert not refused.allowed and refused.reason == "explicit"
    assert screen_prompt(prompt, age_restricted=True).allowed


@pytest.mark.parametrize("prompt", ["a nude child", "K1D, n.u.d.e", "loli", "sexy teen", "a naked little girl", "Lolicón art"])
def test_sexual_content_involving_minors_is_refused_everywhere(prompt: str) -> None:
    for age_restricted in (False, True):
        verdict = screen_prompt(prompt, age_restricted=age_restricted)
        assert not verdict.allowed and verdict.reason == "minors"


@pytest.mark.parametrize("prompt", INNOCENT)
def test_words_that_only_contain_a_term_pass(prompt: str) -> None:
    assert screen_prompt(prompt, age_restricted=False, server_words=["moon", "hot dog"]).allowed


def test_a_servers_own_words_are_refused_in_that_server_also_spelled_out() -> None:
    words = ["moon", "hot dog"]
    for prompt in ("TOK on the Moon", "TOK on the m-o-o-n", "TOK on the m00n", "a HOT DOG", "hot-dog stand"):
        verdict = screen_prompt(prompt, age_restricted=True, server_words=words)
        assert not verdict.allowed and verdict.reason == "server words", prompt
    assert screen_prompt("TOK on the moonlit beach", age_restricted=False, server_words=words).allowed
    assert screen_prompt("a hot day with a dog", age_restricted=False, server_words=words).allowed
    assert screen_prompt("TOK on the moon", age_restricted=False).allowed  # another server's words do not apply


def test_the_refusal_says_why_without_quoting_the_term() -> None:
    for prompt, channel, words in (("p0rn", False, []), ("loli", True, []), ("TOK on the moon", True, ["moon"])):
        error = PromptRefused(screen_prompt(prompt, age_restricted=channel, server_words=words))
        text = str(error)
        assert text.startswith("This prompt was refused:") and "porn" not in text and "loli" not in text
        assert "moon" not in text


def test_a_block_word_needs_a_letter() -> None:
    assert block_word_problem("...") and block_word_problem("") and block_word_problem("moon") is None
