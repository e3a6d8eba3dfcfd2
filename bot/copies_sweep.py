"""The bot's host keeps copies of a bucket's objects too (the pictures and contact sheets it
posts): every PAWTRAIT_CACHE_SWEEP_S it drops the copies of objects any host deleted, as each
worker's chore does (engine.gpu.worker.chores), so a bot-only host never keeps a forgotten pet."""

from __future__ import annotations

import asyncio
import logging

from storage.files import FileStore

log = logging.getLogger(__name__)


async def drop_deleted_copies_forever(store: FileStore, interval_s: float) -> None:
    while True:
        try:
            dropped = await store.drop_deleted_copies()
            if dropped:
                log.info("removed %d local copies of deleted files", len(dropped))
        except Exception:  # a bucket hiccup: the next round tries again
            log.exception("could not check this host's copies against the file store; trying again later")
        await asyncio.sleep(interval_s)
