"""Which checkpoint a finished training keeps: the members' votes, then the scores.

The rule, told to members in the finish message:
1. The checkpoint whose validation images got the most vote reactions (the server's vote
   emoji) wins.
2. Votes tied: the suggestion rule (suggest.py) picks among the tied steps; without scores,
   the owner's vote decides, then the later step.
3. Nobody voted: the suggested checkpoint; without scores, the last one.

The rule runs once per training, when it succeeds (the training service, so a run trained
from the CLI or while the bot was away keeps a checkpoint too); the step, the reason and the
votes it counted are recorded on the run. The bot's announcement, and any replay of it after
a restart, shows that record: it never chooses again, which would undo a `/pick` made since.
Torch-free, so the bot can call it.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.usecases.scoring.suggest import Suggestion, break_tie, suggest
from storage.db import Queries
from storage.discord_posts import voted_steps
from storage.guild_settings import get_guild_settings
from storage.pets import Pet, set_active_checkpoint
from storage.runs import Checkpoint, RecordedChoice, get_run, list_checkpoints, record_choice, vote_tally
from storage.scores import RunScores, run_scores


@dataclass(frozen=True)
class Choice:
    checkpoint: Checkpoint
    reason: str  # one sentence for the finish message
    votes: dict[int, int]  # per checkpoint step
    scores: RunScores
    suggestion: Suggestion | None

    @property
    def voted_step(self) -> int | None:
        """The step with the most votes (the chosen one on a tie), None when nobody voted."""
        return self.checkpoint.step if max(self.votes.values(), default=0) > 0 else None


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


async def vote_emoji(db: Queries, pet: Pet) -> str:
    return (await get_guild_settings(db, pet.guild_id)).vote_emoji


async def run_standing(
    db: Queries, run_id: int, pet: Pet, emoji: str
) -> tuple[dict[int, int], RunScores, Suggestion | None]:
    """(votes per checkpoint step, scores, suggestion) of a run, as the rule and /pick see them."""
    votes = await vote_tally(db, run_id, emoji)  # every checkpoint step, 0 where nobody voted
    scores = await run_scores(db, run_id)
    return votes, scores, suggest(scores.steps, scores.reference, pet.name)


def pick_step(
    votes: dict[int, int], owner_steps: set[int], scores: RunScores, suggestion: Suggestion | None
) -> tuple[int, str]:
    """(kept step, why) from the votes per checkpoint step (every checkpoint step is a key)."""
    best = max(votes.values())
    if best == 0:
        if suggestion is not None and suggestion.step in votes:
            return suggestion.step, f"nobody voted, so I kept the suggested checkpoint: {suggestion.reason}"
        last = max(votes)
        return last, f"nobody voted and there are no scores, so I kept the last checkpoint (step {last})"
    tied = sorted(step for step, count in votes.items() if count == best)
    if len(tied) == 1:
        return tied[0], f"step {tied[0]} got the most votes ({_plural(best, 'vote')})"
    listed = ", ".join(str(step) for step in tied)
    by_score = break_tie(tied, scores.steps, scores.reference)
    if by_score is not None:
        return by_score, f"steps {listed} tied with {_plural(best, 'vote')}; step {by_score} scores best"
    owner_tied = [step for step in tied if step in owner_steps]
    if owner_tied:
        return max(owner_tied), f"steps {listed} tied with {_plural(best, 'vote')}; the owner's vote went to step {max(owner_tied)}"
    return tied[-1], f"steps {listed} tied with {_plural(best, 'vote')}; the later step won"


async def choose_checkpoint(db: Queries, run_id: int, pet: Pet) -> Choice | None:
    """The run's choice: the one recorded, else the rule applied now, recorded and made the pet's.

    None without checkpoints, or when the recorded one was deleted since.
    """
    checkpoints = {checkpoint.step: checkpoint for checkpoint in await list_checkpoints(db, run_id)}
    if not checkpoints:
        return None
    emoji = await vote_emoji(db, pet)
    votes, scores, suggestion = await run_standing(db, run_id, pet, emoji)
    run = await get_run(db, run_id)
    recorded = run.choice if run is not None else None
    if recorded is None:
        step, reason = pick_step(votes, await voted_steps(db, run_id, pet.owner_id, emoji), scores, suggestion)
        async with db.transaction() as tx:
            if await record_choice(tx, run_id, checkpoints[step].id, RecordedChoice(step, reason, votes)):
                await set_active_checkpoint(tx, pet.id, checkpoints[step].id)
        recorded = (await get_run(db, run_id)).choice  # ours, or another process's recorded first
    chosen = checkpoints.get(recorded.step)
    return None if chosen is None else Choice(chosen, recorded.reason, recorded.votes, scores, suggestion)
