"""How numbers look in Discord messages: progress bars, durations, queue positions, scores, audit lines."""

from __future__ import annotations

from datetime import datetime

import discord

from storage.audit import AuditLine

PROMPT_SHOWN = 120  # characters of a prompt or detail an audit line shows


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


DISCORD_LIMIT = 2000  # characters in one message


def cut(text: str, limit: int = DISCORD_LIMIT) -> str:
    """Text that fits one Discord message, ending in '…' where it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def audit_text(line: AuditLine) -> str:
    """`#12` <time> @member **imagine** · done · pet Mochi · seed 7 · job 3 · “prompt”"""
    when = int(datetime.fromisoformat(line.created_at.replace("Z", "+00:00")).timestamp())
    parts = [f"`#{line.id}` <t:{when}:f> <@{line.user_id}> **{line.command}**", line.verdict]
    if line.pet:
        parts.append(f"pet {discord.utils.escape_markdown(line.pet)}")
    if line.checkpoint_id is not None:
        parts.append(f"checkpoint {line.checkpoint_id}")
    if line.seed is not None:
        parts.append(f"seed {line.seed}")
    if line.job_id is not None:
        parts.append(f"job #{line.job_id}")
    if line.prompt:
        parts.append(f"“{discord.utils.escape_markdown(cut(line.prompt, PROMPT_SHOWN))}”")
    if line.detail:
        parts.append(discord.utils.escape_markdown(cut(line.detail, PROMPT_SHOWN)))
    return " · ".join(parts)
