"""Torch-free use cases: the bot, the CLI and the worker all call these; none loads torch."""
