"""Prompt screening (engine.usecases.moderation.prompts): what a member typing /imagine gets refused, and what passes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.usecases.generation.request import GenerationRequest
from engine.usecases.moderation.prompts import PromptRefused, block_word_problem, screen_prompt
from engine.usecases.queueing import queue_generation
from storage import jobs
from storage.audit import record_audit
from storage.moderation import add_block_word

from cli_helpers import pawtrait

EXPLICIT = ["a nude photo of TOK", "TOK cat, NSFW", "porn", "a naked man next to TOK"]
EVASIONS = ["s.e.x with TOK", "a s e x scene", "a n a l", "S E X", "s-e-x", "Séx", "NÜDE TOK", "n u d e", "p0rn", "$ex", "5EX", "d1ck", "n_u_d_e"]
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


# ---- the engine's queueing, the last line every front end passes ---------------------------


@pytest.mark.both_modes
async def test_queueing_screens_the_prompt_with_the_servers_words_and_the_channel(db, settings) -> None:
    await add_block_word(db, "g1", "moon", "mod")
    for prompt, age_restricted, reason in (("TOK on the m.o.o.n", True, "server words"), ("NUDE", False, "explicit"),
                                           ("a nude child", True, "minors")):
        request = GenerationRequest(prompt=prompt, age_restricted=age_restricted)
        with pytest.raises(PromptRefused) as refused:
            await queue_generation(db, settings, request, None, "g1", "bob")
        assert refused.value.verdict.reason == reason
    queued = await queue_generation(db, settings, GenerationRequest(prompt="NUDE", age_restricted=True), None, "g1", "bob")
    other_server = await queue_generation(db, settings, GenerationRequest(prompt="TOK on the moon"), None, "g2", "bob")
    assert [job.id for job in await jobs.list_jobs(db)] == [queued.id, other_server.id]
    assert queued.payload["request"]["age_restricted"] is True


def test_pawtrait_imagine_refuses_a_screened_prompt_before_loading_the_model(env, tmp_path: Path) -> None:
    for extra in ((), ("--detach",)):
        result = pawtrait("imagine", "a s.e.x scene", "--steps", "1", *extra, env=env, cwd=tmp_path)
        assert result.returncode == 1 and "This prompt was refused" in result.stderr, result.stderr
        assert "loading the model" not in result.stderr


@pytest.mark.both_modes
async def test_pawtrait_audit_prints_the_log_newest_first_with_filters(db, env, tmp_path: Path) -> None:
    await record_audit(db, "g1", "alice", "imagine", "done", prompt="TOK on the moon", pet="Mochi", seed=7, job_id=3)
    await record_audit(db, "g1", "bob", "imagine", "prompt refused (explicit)", prompt="p0rn", detail="This prompt was refused")
    await record_audit(db, "g2", "carol", "train", "done", pet="Rex")
    every = await asyncio.to_thread(pawtrait, "audit", env=env, cwd=tmp_path)
    assert every.returncode == 0 and [line.split("\t")[3] for line in every.stdout.splitlines()] == [
        "train", "imagine", "imagine"]
    alice = (await asyncio.to_thread(pawtrait, "audit", "--guild", "g1", "--pet", "mochi", env=env, cwd=tmp_path)).stdout
    assert alice.count("\n") == 1 and "member alice\timagine\tdone\tpet Mochi\tseed 7\tjob 3\tprompt 'TOK on the moon'" in alice
    bob = (await asyncio.to_thread(pawtrait, "audit", "--member", "bob", env=env, cwd=tmp_path)).stdout
    assert "prompt refused (explicit)" in bob and "alice" not in bob
