"""The suggested checkpoint: the most faithful one that has not lost prompt adherence.

Training pulls a pet's pictures toward its photos (likeness, mean DINO of a step's
validation pictures, rises); overfitting shows as prompts being ignored, the creative ones
first, their pictures collapsing onto the photos (adherence, mean CLIP-T, falls). The rule:

1. A checkpoint keeps adherence when its adherence is at least the untrained model's (the
   run's step 0) minus TOLERANCE; without a step-0 score, the best checkpoint's stands in.
2. Of those, the one with the highest likeness; if none keeps adherence, the one that
   follows prompts best. Values equal at the two decimals shown are ties, and ties go to the
   earlier step (the same look with less training).
3. No scored checkpoint: no suggestion.

TOLERANCE = 0.02 CLIP-T, chosen (not measured: CI has no real weights) as under half the gap
in the DreamBooth paper's Table 1 between a method that follows prompts (DreamBooth on SD,
0.305) and one that largely does not (Textual Inversion, 0.255), yet above the rounding of
the two decimals a member sees, so a seed-to-seed wobble of a three-picture mean does not
count as losing the prompt while a real collapse does.

Torch-free: the bot imports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from storage.scores import StepScores

TOLERANCE = 0.02
# The rule in one line, shown wherever a suggestion is.
RULE = "the suggested checkpoint is the one most like the photos that still follows prompts about as well as the untrained model"


@dataclass(frozen=True)
class Suggestion:
    step: int
    checkpoint_id: int | None
    reason: str  # one line a member understands


def _shown(value: float) -> float:
    """Compare as displayed: scores that print the same are the same."""
    return round(value, 2)


def suggest(steps: Sequence[StepScores], reference: StepScores | None, name: str = "your pet") -> Suggestion | None:
    """The checkpoint the rule picks from `steps` (a run's scored checkpoints), with why."""
    scored = sorted((step for step in steps if step.has_scores), key=lambda step: step.step)
    if not scored:
        return None
    untrained = reference.clip_t if reference is not None else None
    baseline = untrained if untrained is not None else max(step.clip_t for step in scored)
    keeping = [step for step in scored if step.clip_t >= baseline - TOLERANCE]
    if keeping:
        # max() keeps the first of equals: the earliest step among ties.
        chosen = max(keeping, key=lambda step: _shown(step.dino))
        compared = f"the untrained model {baseline:.2f}" if untrained is not None else f"the best {baseline:.2f}"
        reason = (
            f"step {chosen.step} looks most like {name} (likeness {chosen.dino:.2f}) "
            f"while still following prompts ({chosen.clip_t:.2f}, {compared})"
        )
    else:
        chosen = max(scored, key=lambda step: _shown(step.clip_t))
        reason = (
            f"every checkpoint follows prompts less well than the untrained model ({baseline:.2f}); "
            f"step {chosen.step} follows them best ({chosen.clip_t:.2f}, likeness {chosen.dino:.2f})"
        )
    return Suggestion(step=chosen.step, checkpoint_id=chosen.checkpoint_id, reason=reason)


def break_tie(tied: Iterable[int], steps: Sequence[StepScores], reference: StepScores | None) -> int | None:
    """Of steps with equally many votes, the one the rule prefers; None when none of them has scores."""
    among = set(tied)
    chosen = suggest([step for step in steps if step.step in among], reference)
    return None if chosen is None else chosen.step
