"""`pawtrait audit`: the audit log from the shell, newest first (what `/audit` shows a server's moderators)."""

from __future__ import annotations

import argparse
import asyncio

from config.settings import Settings
from storage.audit import AuditLine


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="the audit log: who did what, when, with which prompt, pet and seed",
        description="Print the audit log newest first, one line per command, button, settings change or "
        "screening verdict: time (UTC), server, member, command, verdict, then pet, checkpoint, seed, job "
        "and prompt where there are some. Lines older than PAWTRAIT_AUDIT_DAYS are deleted by the workers.",
    )
    parser.add_argument("--guild", metavar="ID", help="only this Discord server (default: every server)")
    parser.add_argument("--member", metavar="ID", help="only this member (a Discord user id)")
    parser.add_argument("--pet", metavar="NAME", help="only lines about this pet")
    parser.add_argument("--limit", type=int, default=50, metavar="N", help="at most N lines (default 50)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    for line in asyncio.run(_lines(args, settings)):
        print(describe(line))
    return 0


async def _lines(args: argparse.Namespace, settings: Settings) -> list[AuditLine]:
    from storage.audit import audit_lines
    from storage.connect import open_storage

    async with open_storage(settings) as storage:
        return await audit_lines(storage.db, args.guild, user_id=args.member, pet=args.pet, limit=max(1, args.limit))


def describe(line: AuditLine) -> str:
    """One tab-separated line: the fixed columns, then whichever details the line has."""
    details = [
        f"pet {line.pet}" if line.pet else "",
        f"checkpoint {line.checkpoint_id}" if line.checkpoint_id is not None else "",
        f"seed {line.seed}" if line.seed is not None else "",
        f"job {line.job_id}" if line.job_id is not None else "",
        f"prompt {line.prompt!r}" if line.prompt else "",
        line.detail or "",
    ]
    return "\t".join([line.created_at, f"server {line.guild_id}", f"member {line.user_id}", line.command,
                      line.verdict, *[detail for detail in details if detail]])
