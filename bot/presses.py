"""Buttons that must act once however often they are pressed: 📌 share and 🚩 report.

discord.py runs every press as its own task, so presses that arrive together (a member
clicking five times before the first answer) all pass a look at the database before any of
them has written what it did. A claim here is taken before the press's first `await`, so of
presses that come together exactly one goes ahead. Each press reaches one bot process, which
is all a claim in memory needs; what a finished press did is in the database, for the presses
that come later and for a restarted bot.
"""

from __future__ import annotations

from collections.abc import Hashable


class PressClaims:
    """What presses are at work now (or, for a report, have been done) in this bot process."""

    def __init__(self) -> None:
        self._held: set[Hashable] = set()

    def take(self, key: Hashable) -> bool:
        """Claim `key`; False when another press holds it (the caller tells the member and stops)."""
        if key in self._held:
            return False
        self._held.add(key)
        return True

    def give_back(self, key: Hashable) -> None:
        """Let the next press of `key` go ahead (it finds what this one did in the database)."""
        self._held.discard(key)
