"""How text and numbers look in Discord messages: member text cut to fit, listings that end
with "…and N more", progress bars, durations, queue positions, scores, audit lines.

Discord refuses a message over 2,000 characters outright (the member sees nothing), and
members can type thousands of characters into prompts, negatives and file names; every
echo of member text goes through `clip` (inside `echo` or `code`, which also keep its markdown
from rendering), every listing through `listing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import discord

from storage.audit import AuditLine

MESSAGE_LIMIT = 2000  # characters of a message's content (Discord answers 400 beyond it)
ECHO_LIMIT = 300  # a prompt, negative or file name quoted inside a longer message
PROMPT_SHOWN = 120  # characters of a prompt or detail an audit line shows


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text` cut to at most `limit` characters, ending with an ellipsis when it was cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def one_line(text: str) -> str:
    """`text` on one line: line breaks (also \r, U+2028, U+2029) and runs of spaces become one space.
    Member text quoted in a line of the bot's must not start a line of its own, which could pass
    for one of the bot's ("✅ Approved by the moderators", a made-up audit line in a report)."""
    return " ".join(text.split())


def echo(text: str, limit: int = ECHO_LIMIT) -> str:
    """Member text (a prompt, a name) quoted in the bot's words: on one line, cut to fit, its markdown
    escaped, so it cannot make the bot post a masked link ("[free nitro](https://…)"), a heading or
    a spoiler, or a line that looks like the bot's own."""
    return discord.utils.escape_markdown(clip(one_line(text), limit))


def code(text: str, limit: int = ECHO_LIMIT) -> str:
    """Member text (a file name, a prompt) as inline code, on one line, cut to fit. Its own backticks
    become ˋ: one of them would end the code early and let the rest render as markdown."""
    return f"`{clip(one_line(text.replace('`', 'ˋ')), limit)}`"


def listing(
    head: Sequence[str], items: Sequence[str], tail: Sequence[str] = (), limit: int = MESSAGE_LIMIT, left_out: int = 0
) -> str:
    """The head lines, as many items as fit within `limit` beside the tail, then "…and N more"
    (N counts `left_out` too: items the caller did not even render)."""
    for count in range(len(items), -1, -1):
        hidden = len(items) - count + left_out
        text = "\n".join([*head, *items[:count], *([f"…and {hidden} more"] if hidden else []), *tail])
        if len(text) <= limit:
            return text
    return clip(text, limit)  # the head and tail alone are too long: cut them too


def progress_bar(done: int, total: int, width: int = 20) -> str:
    filled = 0 if total <= 0 else round(width * min(done, total) / total)
    return "█" * filled + "░" * (width - filled)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def queue_line(position: int | None, wait_s: float | None) -> str:
    """'running now', or the place in the queue with the expected wait."""
    if position == 0:
        return "running now"
    if position is None:
        return "finished"
    ahead = "next in line" if position == 1 else f"number {position} in the queue"
    return f"{ahead}, starts in about {duration(wait_s)}"


def scores_text(likeness: float | None, adherence: float | None) -> str:
    """'likeness 0.71 · prompts 0.30' (DINO and CLIP-T, engine/scoring), or '' without scores."""
    if likeness is None or adherence is None:
        return ""
    return f"likeness {likeness:.2f} · prompts {adherence:.2f}"


def audit_text(line: AuditLine) -> str:
    """`#12` <time> @member **imagine** · done · pet Mochi · seed 7 · job 3 · “prompt”"""
    when = int(datetime.fromisoformat(line.created_at.replace("Z", "+00:00")).timestamp())
    parts = [f"`#{line.id}` <t:{when}:f> <@{line.user_id}> **{line.command}**", line.verdict]
    if line.pet:
        parts.append(f"pet {echo(line.pet)}")
    if line.checkpoint_id is not None:
        parts.append(f"checkpoint {line.checkpoint_id}")
    if line.seed is not None:
        parts.append(f"seed {line.seed}")
    if line.job_id is not None:
        parts.append(f"job #{line.job_id}")
    if line.prompt:
        parts.append(f"“{echo(line.prompt, PROMPT_SHOWN)}”")
    if line.detail:
        parts.append(echo(line.detail, PROMPT_SHOWN))
    return " · ".join(parts)
