"""Prompt screening: a prompt is refused before it is queued when it asks for what this
channel may not show.

Three tiers:
- refused everywhere: sexual content involving minors (a term for a minor together with a
  sexual term, or a term that means such content by itself);
- refused outside age-restricted channels: sexual and explicit terms (Discord allows that
  content only in age-restricted channels);
- a server's own block words (`/settings block-words`), refused everywhere in that server.

Matching works on normalised words, so evasions match and innocent words do not: case and
accents are folded (unicodedata), common letter-for-digit swaps are undone (s3x, $ex, 5ex),
letters spelled out one by one with separators are joined (s.e.x, s e x, s-e-x), and a term
matches whole words only, so "classic", "Sussex" and "cockatiel" pass.

No library fits: better-profanity (last release 2020) and profanity-check / alt-profanity-check
flag swearing, not the tiers above, and none of them matches server-chosen phrases on word
boundaries with accents folded; this module is plain standard-library Python.

The refusal never quotes the matched term, so the list cannot be probed term by term.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from engine.usecases.generation.request import GenerationError

# Swaps that evasions use; '1' stands for i or l, so both readings are checked.
_SWAPS = str.maketrans({"0": "o", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_ONE_AS = ("i", "l")
_WORD = re.compile(r"[a-z0-9@$]+")

# Terms that mean sexual content involving minors by themselves.
_ABUSE_TERMS = (
    "loli", "lolis", "lolicon", "shota", "shotas", "shotacon", "jailbait", "pedo", "pedophile", "paedophile",
    "pedophilia", "paedophilia", "csam", "child porn", "kiddie porn",
)
# Terms for a minor: with a sexual term anywhere in the prompt, refused everywhere. Pets'
# young (kitten, puppy) are not on it: the bot paints pets.
_MINOR_TERMS = (
    "child", "children", "childs", "kid", "kids", "minor", "minors", "underage", "under age", "preteen",
    "preteens", "pre teen", "teen", "teens", "teenager", "teenagers", "toddler", "toddlers", "baby", "babies",
    "infant", "infants", "schoolgirl", "schoolgirls", "schoolboy", "schoolboys", "little girl", "little girls",
    "little boy", "little boys", "young girl", "young girls", "young boy", "young boys", "juvenile", "youngster",
    "prepubescent", "tween", "tweens",
)
# Sexual and explicit terms: refused outside age-restricted channels.
_EXPLICIT_TERMS = (
    "sex", "sexual", "sexually", "sexy", "nsfw", "nude", "nudes", "nudity", "naked", "topless", "bottomless",
    "porn", "porno", "pornographic", "pornography", "hentai", "xxx", "erotic", "erotica", "lewd",
    "fetish", "bdsm", "bondage", "genital", "genitals", "genitalia", "penis", "penises", "vagina", "vaginas",
    "vulva", "dick", "dicks", "cock", "cocks", "boobs", "boob", "nipple", "nipples", "orgasm", "orgasms",
    "masturbate", "masturbating", "masturbation", "intercourse", "blowjob", "handjob", "cum", "cumshot",
    "semen", "ejaculation", "ejaculating", "anal", "orgy", "orgies", "striptease", "stripper", "strippers",
    "sex toy", "dildo", "dildos", "onlyfans", "rule34", "rule 34", "ahegao", "futanari", "bukkake",
    "gangbang", "threesome", "milf", "horny", "aroused", "erection", "undressed", "undressing", "seductive",
)


@dataclass(frozen=True)
class PromptVerdict:
    """What screening decided; `reason` is a category for the audit log, never the matched term."""

    allowed: bool
    reason: str | None = None  # 'minors' | 'explicit' | 'server words'

    @property
    def audit_text(self) -> str:
        return "prompt allowed" if self.allowed else f"prompt refused ({self.reason})"


ALLOWED = PromptVerdict(True)
_MESSAGES = {
    "minors": "This prompt was refused: Pawtrait never paints sexual content involving minors.",
    "explicit": (
        "This prompt was refused: it asks for sexual or explicit content, which Pawtrait paints only in "
        "age-restricted channels. Rephrase it, or ask in an age-restricted channel."
    ),
    "server words": "This prompt was refused: it uses words this server's moderators have blocked. Please rephrase it.",
}


class PromptRefused(GenerationError):
    """A prompt screening refused; the message says why in general terms, for the member as is."""

    def __init__(self, verdict: PromptVerdict) -> None:
        super().__init__(_MESSAGES[verdict.reason or "explicit"])
        self.verdict = verdict


def _folded(text: str) -> str:
    """Lower case without accents: 'Sëx' -> 'sex' (NFKD splits a letter from its accent)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char)).casefold()


def _joined(words: list[str], article_first: bool) -> list[str]:
    """Runs of single characters become one word ('s e x' -> 'sex'); other words stay. With
    `article_first`, a run's leading 'a' or 'i' stays a word of its own ('a s e x' -> 'a sex')."""
    result: list[str] = []
    run: list[str] = []
    for word in words + [""]:
        if len(word) == 1:
            run.append(word)
            continue
        if article_first and len(run) > 2 and run[0] in ("a", "i"):
            result.append(run.pop(0))
        if run:
            result.append("".join(run))
            run = []
        if word:
            result.append(word)
    return result


def _unswapped(word: str, one: str) -> str:
    """Undo digit swaps in a word that has letters ('s3x' -> 'sex'); plain numbers stay numbers."""
    if word.isdigit():
        return word
    return word.translate(_SWAPS).replace("1", one)


def normalised_readings(text: str) -> list[tuple[str, ...]]:
    """The text's words after folding, joining and undoing swaps; one reading per meaning of '1'
    and of a spelled-out run's first letter."""
    words = _WORD.findall(_folded(text))
    readings = {
        tuple(_unswapped(word, one) for word in _joined(words, article_first))
        for one in _ONE_AS
        for article_first in (False, True)
    }
    return sorted(readings)


def _phrase(term: str) -> tuple[str, ...]:
    """A term as the words a prompt must contain in a row, normalised like a prompt."""
    readings = normalised_readings(term)
    return readings[0] if readings else ()


def _contains(words: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    size = len(phrase)
    return size > 0 and any(words[i : i + size] == phrase for i in range(len(words) - size + 1))


def _any(readings: list[tuple[str, ...]], phrases: Iterable[tuple[str, ...]]) -> bool:
    return any(_contains(words, phrase) for words in readings for phrase in phrases)


_ABUSE = [_phrase(term) for term in _ABUSE_TERMS]
_MINORS = [_phrase(term) for term in _MINOR_TERMS]
_EXPLICIT = [_phrase(term) for term in _EXPLICIT_TERMS]


def screen_prompt(prompt: str, *, age_restricted: bool, server_words: Iterable[str] = ()) -> PromptVerdict:
    """Screen a prompt for a channel (age-restricted or not) of a server with its own block words."""
    readings = normalised_readings(prompt)
    explicit = _any(readings, _EXPLICIT)
    if _any(readings, _ABUSE) or (explicit and _any(readings, _MINORS)):
        return PromptVerdict(False, "minors")
    if explicit and not age_restricted:
        return PromptVerdict(False, "explicit")
    if _any(readings, [_phrase(word) for word in server_words]):
        return PromptVerdict(False, "server words")
    return ALLOWED


def block_word_problem(word: str) -> str | None:
    """Why a server's block word cannot be used, in plain words, or None when it can."""
    if not _phrase(word):
        return "A block word needs at least one letter or digit."
    return None
