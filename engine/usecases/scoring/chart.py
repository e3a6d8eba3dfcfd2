"""The finish message's chart: likeness and prompt adherence by step, as a small PNG.

Two panels over the same steps (the scores live on different scales: DINO likeness near
0.3-0.8, CLIP-T adherence near 0.2-0.35), step 0 being the untrained model, with the
suggested checkpoint marked by a dashed line and the voted one by a star. Drawn with
matplotlib's Agg backend (no display, thread-safe through its object API, about 0.25 s);
torch-free, so the bot draws it in a thread beside its event loop.
"""

from __future__ import annotations

import io

from storage.scores import RunScores

LIKENESS, ADHERENCE = "#1f77b4", "#d62728"


def score_chart(scores: RunScores, suggested: int | None, voted: int | None) -> bytes | None:
    """PNG bytes of the chart, or None when no step has scores."""
    steps = [step for step in ([scores.reference] if scores.reference else []) + scores.steps if step.has_scores]
    if not [step for step in steps if step.step > 0]:
        return None
    # Imported here: about 0.4 s that the bot would otherwise pay at every start for a chart
    # it draws once per finished training.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.4), dpi=100, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    x = [step.step for step in steps]
    for axes, values, color, label in (
        (top, [step.dino for step in steps], LIKENESS, "likeness to the photos (DINO)"),
        (bottom, [step.clip_t for step in steps], ADHERENCE, "prompt adherence (CLIP-T)"),
    ):
        axes.plot(x, values, marker="o", color=color)
        axes.set_title(label, fontsize=9, loc="left")
        axes.tick_params(labelsize=8)
        axes.grid(alpha=0.3)
        if suggested is not None:
            axes.axvline(suggested, color="#2ca02c", linestyle="--", linewidth=1.2)
        if voted is not None and voted in x:
            axes.plot([voted], [values[x.index(voted)]], marker="*", markersize=14, color="#ff9f1c", linestyle="none")
    bottom.set_xlabel(" · ".join(["training step (0 = untrained)", *_legend(suggested, voted)]), fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _legend(suggested: int | None, voted: int | None) -> list[str]:
    parts = []
    if suggested is not None:
        parts.append(f"dashed: suggested (step {suggested})")
    if voted is not None:
        parts.append(f"star: most votes (step {voted})")
    return parts
