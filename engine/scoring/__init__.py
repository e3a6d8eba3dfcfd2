"""Checkpoint scores as the DreamBooth paper measures them, and the checkpoint they suggest.

- models.py, scorer.py: DINO and CLIP-I likeness to the pet's own photos, CLIP-T adherence to
  the prompt, for each validation picture (torch; the worker and the CLI).
- suggest.py: the one rule that picks a checkpoint from those scores (torch-free: the bot uses it).
- prompts.py: the prompt CLIP-T compares with (torch-free).
- dreambench.py: the paper's benchmark protocol on its public dataset layout.
- tiny.py: tiny random scoring models for tests, and random ones of the real sizes for benchmarks.
"""
