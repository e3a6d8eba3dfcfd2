"""How numbers look in Discord messages: progress bars, durations, queue positions, scores."""

from __future__ import annotations


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
