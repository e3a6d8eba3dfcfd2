"""`pawtrait bot`: run the Discord bot and its GPU worker(s) until stopped."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import TYPE_CHECKING

from config.settings import Settings, SettingsError

if TYPE_CHECKING:
    from bot.settings import BotSettings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bot",
        help="run the Discord bot (and its GPU workers)",
        description="Connect to Discord with DISCORD_TOKEN and serve the slash commands. Starts one GPU worker "
        "per visible GPU (PAWTRAIT_WORKERS changes that; 0 = run `pawtrait worker` yourself). "
        "README.md, section 'Run the bot', walks through creating the Discord application.",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from bot.settings import BotSettings

    try:
        bot_settings = BotSettings.from_env()
    except SettingsError as error:
        print(f"pawtrait bot: {error}")
        return 2
    if not bot_settings.token:
        print(
            "pawtrait bot: DISCORD_TOKEN is not set. Create a bot in the Discord developer portal, copy its token "
            "into .env as DISCORD_TOKEN=..., then run `pawtrait bot` again (README.md, section 'Run the bot', shows every step)."
        )
        return 2
    return asyncio.run(serve(settings, bot_settings))


async def serve(settings: Settings, bot_settings: BotSettings) -> int:
    """Workers first (they take a while to load the model), then the bot until it is closed."""
    import discord

    from bot.app import PawtraitBot
    from engine.gpu.worker.supervisor import WorkerSupervisor

    bot_settings.apply_endpoints()
    assert bot_settings.token is not None
    supervisor = WorkerSupervisor(settings)
    bot = PawtraitBot(settings, bot_settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: asyncio.ensure_future(bot.close()))
    await supervisor.start()
    try:
        await bot.start(bot_settings.token)
    except discord.LoginFailure:
        print("pawtrait bot: Discord refused DISCORD_TOKEN; copy the bot token again from the developer portal (Bot → Reset Token).")
        return 1
    finally:
        if not bot.is_closed():
            await bot.close()
        await supervisor.stop()
    return 0
