"""Configuration shared by every layer (bot, engine, storage, CLI): it imports none of them."""
