"""Checkpoint choice from votes and scores, the rule that suggests one, and the chart of scores (torch-free: the bot uses them)."""
