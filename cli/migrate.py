"""`pawtrait migrate-to`: move this installation's records and files to PostgreSQL and a bucket."""

from __future__ import annotations

import argparse
import asyncio
import sys

from config.settings import Settings

LIVE_S = 30.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "migrate-to",
        help="copy every pet, run, checkpoint and picture to a PostgreSQL database and/or an S3 bucket",
        description="Copy this installation (as PAWTRAIT_DATABASE_URL and PAWTRAIT_FILES_URL configure it now; by "
        "default the SQLite file and the data folder) to new storage shared by many hosts: every record with its "
        "id into an empty database, every file under the same key into a bucket, then check that each file a "
        "record names arrived. Stop the bot and every worker first. Nothing is deleted here: afterwards point "
        "PAWTRAIT_DATABASE_URL and PAWTRAIT_FILES_URL at the new storage (README.md, 'Run on many hosts').",
    )
    parser.add_argument("--database", metavar="URL", help="postgresql://USER:PASSWORD@HOST/DATABASE (an empty database)")
    parser.add_argument("--files", metavar="URL", help="s3://BUCKET/PREFIX (credentials from the AWS_* variables)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not args.database and not args.files:
        print("pawtrait migrate-to: say where to: --database postgresql://... and/or --files s3://...", file=sys.stderr)
        return 2
    return asyncio.run(_migrate(args, settings))


async def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    import os

    from tqdm import tqdm

    from storage import jobs, transfer, workers
    from storage.connect import open_storage
    from storage.db import DatabaseUnavailable, open_database
    from storage.files import FileStoreError, open_files

    storage = await open_storage(settings)
    db, store = storage
    target_db = None
    try:
        busy = [w.id for w in await workers.live(db, LIVE_S)] + [
            f"job #{r.job.id}" for r in await jobs.running_jobs(db)
        ]
        if busy:
            print(f"pawtrait migrate-to: still running: {', '.join(busy)}. Stop the bot and every worker "
                  "(running jobs go back to the queue and are copied too), then run this again.", file=sys.stderr)
            return 1
        target_db = await open_database(args.database) if args.database else None
        target_store = open_files(args.files, settings.data_dir, settings.extra or os.environ) if args.files else None
        if target_store is not None:
            await target_store.probe()
        if target_db is not None:
            counts = await transfer.copy_records(db, target_db)
            print(f"records: {sum(counts.values())} copied to {target_db.describe()} "
                  f"({counts['pets']} pets, {counts['training_runs']} runs, {counts['checkpoints']} checkpoints, "
                  f"{counts['generations']} generations, {counts['jobs']} jobs)")
        if target_store is not None:
            with tqdm(unit="file", file=sys.stderr, desc="files") as bar:
                def progress(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                copied = await transfer.copy_files(store, target_store, progress)
            print(f"files: {copied} in {target_store.describe()}")
        missing = await transfer.missing_files(target_db or db, target_store or store)
        if missing:
            print(f"pawtrait migrate-to: {len(missing)} files that records name are missing at the target "
                  f"(e.g. {missing[0]}); they were missing here too, or the copy broke off: run this again.",
                  file=sys.stderr)
            return 1
    except (transfer.TargetNotEmpty, DatabaseUnavailable, FileStoreError) as error:
        print(f"pawtrait migrate-to: {error}", file=sys.stderr)
        return 1
    finally:
        await storage.close()
        if target_db is not None:
            await target_db.close()
    print("every file a record names is there. Now set, on every host:")
    if args.database:
        print("  PAWTRAIT_DATABASE_URL=<the database URL you gave>")
    if args.files:
        print(f"  PAWTRAIT_FILES_URL={args.files}  (and the AWS_* variables)")
    print("then start `pawtrait worker` on each GPU host and `pawtrait bot` with PAWTRAIT_WORKERS=0 "
          "(README.md, 'Run on many hosts'). The old data folder is left as it was.")
    return 0
