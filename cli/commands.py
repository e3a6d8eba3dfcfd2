"""What the subcommand modules of `pawtrait` share: running an async command, the --guild option
of the commands about one pet, and naming the pets there are when a name is none of them."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable

from config.settings import Settings
from storage.db import Queries
from storage.pets import LOCAL_GUILD, list_pets

Run = Callable[[argparse.Namespace, Settings], int]

GUILD_HELP = f"guild (Discord server id) the pet belongs to (default {LOCAL_GUILD!r}, the CLI's own)"


def on_own_loop(command: Callable[[argparse.Namespace, Settings], Awaitable[int]]) -> Run:
    """The `run(args, settings)` that main calls, for a command written as a coroutine function."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        return asyncio.run(command(args, settings))

    return run


def add_guild_option(parser: argparse.ArgumentParser) -> None:
    """--guild ID: the Discord server whose pet the command means; the CLI's own pets by default."""
    parser.add_argument("--guild", default=LOCAL_GUILD, metavar="ID", help=GUILD_HELP)


async def pet_names(db: Queries, guild: str) -> str:
    """The pets of `guild`, for a message about a name that is none of them."""
    return ", ".join(pet.name for pet in await list_pets(db, guild)) or "none yet"
