"""Which pictures a post may show, from the worker's verdicts, the server's `safety` setting and the channel.

The worker screens every picture and sends its verdict along (True: flagged, None: unscreened
because the operator turned screening off). A flagged picture is shown only under the
`standard` policy in an age-restricted channel (a thread follows its parent), and then as a
spoiler; anywhere else its place gets a notice that says only that it was withheld. Under
`strict` it is never posted, and the member who asked learns why in an ephemeral message
while Discord still accepts one for their command (15 minutes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import discord

# Discord accepts follow-ups to an interaction for 15 minutes; keep a margin.
INTERACTION_TTL_S = 14 * 60


def withheld_notice(numbers: list[int]) -> str:
    """The public notice: only that pictures were withheld."""
    if len(numbers) == 1:
        return f"🚫 Image {numbers[0]} was withheld."
    return f"🚫 Images {', '.join(str(number) for number in numbers)} were withheld."


def strict_notice(numbers: list[int], what: str) -> str:
    """The ephemeral explanation for the member under `strict`."""
    images = f"image{'s' * (len(numbers) != 1)} {', '.join(str(number) for number in numbers)}"
    return (f"🚫 The safety check flagged {images} of {what}, and this server never posts flagged pictures "
            "(its `safety` setting is strict). Try another prompt or seed.")


def age_restricted(channel: object) -> bool:
    """Discord's age-restricted flag of a channel; a thread follows its parent."""
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if is_nsfw is not None else False


@dataclass
class Showing:
    """What a post of pictures attaches, and the numbers (1 = first) of those it withholds."""

    files: list[discord.File] = field(default_factory=list)
    shown: list[int] = field(default_factory=list)
    withheld: list[int] = field(default_factory=list)


def showing(paths: list[Path | None], flagged: list[bool], policy: str, restricted: bool) -> Showing:
    """The pictures at `paths` (None: the file is gone) as the policy lets this channel see them."""
    result = Showing()
    for number, (path, bad) in enumerate(zip(paths, flagged), start=1):
        if path is None:
            continue
        if bad and not (policy == "standard" and restricted):
            result.withheld.append(number)
            continue
        name = f"SPOILER_{path.name}" if bad else path.name
        result.files.append(discord.File(path, filename=name))
        result.shown.append(number)
    return result


class RecentInteractions:
    """The command (or button) interaction that queued each job, while Discord accepts follow-ups to it.

    Kept in memory only: after a restart the public notice is all the member sees.
    """

    def __init__(self) -> None:
        self._by_job: dict[int, tuple[float, discord.Interaction]] = {}

    def remember(self, job_id: int, interaction: discord.Interaction) -> None:
        now = time.monotonic()
        self._by_job = {job: kept for job, kept in self._by_job.items() if now - kept[0] < INTERACTION_TTL_S}
        self._by_job[job_id] = (now, interaction)

    def take(self, job_id: int) -> discord.Interaction | None:
        kept = self._by_job.pop(job_id, None)
        return kept[1] if kept is not None and time.monotonic() - kept[0] < INTERACTION_TTL_S else None
