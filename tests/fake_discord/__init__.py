"""A fake Discord for end-to-end tests of the bot with the unmodified discord.py client."""

from .server import FakeDiscord, FakeTimeout, InteractionRecord, StoredMessage

__all__ = ["FakeDiscord", "FakeTimeout", "InteractionRecord", "StoredMessage"]
