"""`pawtrait`: the operator's command line. Each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from cli import audit, bot, doctor, evaluate, export, imagine, jobs, migrate, pets, tiny_model, train
from config.redaction import scrub_logs
from config.settings import Settings, SettingsError, environment

# Each module has register(subparsers) that adds its subcommands with a `run(args, settings) -> int`.
COMMAND_MODULES: list[ModuleType] = [doctor, tiny_model, pets, train, imagine, jobs, bot, migrate, export, evaluate, audit]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pawtrait",
        description="Pawtrait learns a pet from 10-15 photos and paints it anywhere. "
        "Teach it photos, train a LoRA, then imagine.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    scrub_logs(environment())
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"pawtrait: {error}", file=sys.stderr)
        return 2
    return args.run(args, settings)


if __name__ == "__main__":
    sys.exit(main())
