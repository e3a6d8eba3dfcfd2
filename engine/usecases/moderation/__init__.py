"""Moderation that runs before any GPU time is spent (torch-free: the bot imports it)."""
