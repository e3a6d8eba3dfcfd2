"""Which checkpoint a finished training keeps: the members' votes decide.

The rule, stated to members when the run ends: the checkpoint whose validation images got
the most vote reactions wins; on a tie the owner's vote decides, then the later step;
with no votes at all, the last checkpoint (the most trained one).
"""

from __future__ import annotations

from dataclasses import dataclass


from storage.db import Queries
from storage.discord_posts import voted_steps
from storage.pets import Pet, set_active_checkpoint
from storage.runs import Checkpoint, list_checkpoints, set_chosen_checkpoint, vote_tally


@dataclass(frozen=True)
class Choice:
    checkpoint: Checkpoint
    reason: str


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def pick_step(tally: dict[int, int], owner_steps: set[int]) -> tuple[int, str]:
    """(winning step, why) from votes per checkpoint step (every step with a checkpoint is a key)."""
    last = max(tally)
    best = max(tally.values())
    if best == 0:
        return last, f"nobody voted, so I kept the last checkpoint (step {last})"
    tied = sorted(step for step, count in tally.items() if count == best)
    if len(tied) == 1:
        return tied[0], f"step {tied[0]} got the most votes ({_plural(best, 'vote')})"
    steps = ", ".join(str(step) for step in tied)
    owner_tied = [step for step in tied if step in owner_steps]
    if owner_tied:
        return max(owner_tied), f"steps {steps} tied with {_plural(best, 'vote')}; the owner's vote went to step {max(owner_tied)}"
    return tied[-1], f"steps {steps} tied with {_plural(best, 'vote')}; the later step won"


async def choose_checkpoint(db: Queries, run_id: int, pet: Pet, emoji: str) -> Choice | None:
    """Apply the voting rule to a run and make the winner the pet's active checkpoint."""
    checkpoints = {checkpoint.step: checkpoint for checkpoint in await list_checkpoints(db, run_id)}
    if not checkpoints:
        return None
    tally = {step: 0 for step in checkpoints}
    tally.update({step: count for step, count in (await vote_tally(db, run_id, emoji)).items() if step in checkpoints})
    step, reason = pick_step(tally, await voted_steps(db, run_id, pet.owner_id, emoji))
    chosen = checkpoints[step]
    await set_chosen_checkpoint(db, run_id, chosen.id)
    await set_active_checkpoint(db, pet.id, chosen.id)
    return Choice(chosen, reason)
