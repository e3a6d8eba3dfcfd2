"""Checkpoint scores as the DreamBooth paper measures them (torch; the worker and the CLI).

- models.py, scorer.py: DINO and CLIP-I likeness to the pet's own photos, CLIP-T adherence to
  the prompt, for each validation picture.
- dreambench.py: the paper's benchmark protocol on its public dataset layout.
- tiny.py: tiny random scoring models for tests, and random ones of the real sizes for benchmarks.

The rule that suggests a checkpoint from these scores, and the prompt CLIP-T compares with, are
torch-free and live in `engine.usecases.scoring`.
"""
