"""Writes tests/data/release-0.1.db with the storage code of the last single-host release.

The database is committed; this script is how it was made (tests/test_migrations.py reads it).
To make it again, with the project's virtual environment:

    git worktree add /tmp/release 5e490ef
    PYTHONPATH=/tmp/release python tests/data/make_release_db.py tests/data/release-0.1.db
    git worktree remove /tmp/release --force

Everything is written through the release's own storage functions (aiosqlite, SQL
migrations V1-V4 recorded in PRAGMA user_version), never by hand.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
import zlib
from pathlib import Path


def tiny_png(shade: int) -> bytes:
    """A valid 2x2 grey PNG, written without any imaging library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    rows = b"".join(b"\x00" + bytes([shade]) * 2 for _ in range(2))
    header = (2).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


async def write(path: Path) -> None:
    from engine.settings import Settings
    from storage import jobs
    from storage.db import connect, schema_version
    from storage.discord_posts import add_discord_job, set_relay_position
    from storage.files import DataDir
    from storage.generations import record_generation
    from storage.guild_settings import update_guild_settings
    from storage.pets import create_pet, set_active_checkpoint
    from storage.photos import insert_photo
    from storage.runs import (
        add_checkpoint,
        add_validation_image,
        add_vote,
        finish_run,
        insert_run,
        mark_running,
        set_chosen_checkpoint,
    )

    data = DataDir(Path(tempfile.mkdtemp(prefix="release-data-")))
    settings = Settings(data_dir=data.root, max_queued_generations_per_user=5, max_queued_trainings_per_user=2)
    db = await connect(path)
    try:
        assert await schema_version(db) == 4
        pet = await create_pet(db, "guild-1", "alice", "Thor", "cat")
        for index in range(2):
            await insert_photo(
                db, pet.id, sha256=f"{index:064x}", phash=f"{index:016x}", original_name=f"IMG_{index}.jpg",
                original_path=f"pets/{pet.id}/photos/p{index}.jpg",
                prepared_path=f"pets/{pet.id}/photos/p{index}-crop.png",
                width=640, height=480, crop=(80, 0, 480), added_by="alice",
            )

        # A training job and its run: claimed, two checkpoints, validation images, votes, finished.
        run_id = await insert_run(db, pet.id, {"steps": 500, "rank": 16}, total_steps=500)
        training = await jobs.submit_job(db, settings, "train", "guild-1", "alice", {"pet_id": pet.id}, run_id=run_id)
        await add_discord_job(db, training.id, "guild-1", "channel-9", "alice", thread_id="thread-3",
                              status_message_id="message-5")
        claimed = await jobs.claim_next_job(db, "worker-a")
        assert claimed is not None and claimed.id == training.id
        await mark_running(db, run_id, 0)
        await jobs.set_progress(db, training.id, 0.5, "step 250/500", {"step": 250, "total": 500, "loss": 0.12})
        checkpoint_ids = []
        for step in (250, 500):
            folder = f"runs/{run_id}/checkpoints/step-{step}"
            checkpoint_ids.append(await add_checkpoint(
                db, run_id, step, folder, "pytorch_lora_weights.safetensors", "thor_kohya.safetensors"
            ))
            await jobs.record_event(db, training.id, "checkpoint", {"step": step})
        image_ids = []
        for checkpoint_id, step in zip(checkpoint_ids, (250, 500)):
            for seed in (1, 2):
                image_ids.append(await add_validation_image(
                    db, run_id, step, checkpoint_id, "a photo of TOK cat", seed,
                    f"runs/{run_id}/validation/step-{step:05d}-{seed}.png",
                ))
        assert await add_vote(db, "bob", "⭐", validation_image_id=image_ids[0])
        assert await add_vote(db, "carol", "⭐", validation_image_id=image_ids[2])
        assert await add_vote(db, "dave", "⭐", validation_image_id=image_ids[3])
        assert await add_vote(db, "erin", "⭐", checkpoint_id=checkpoint_ids[1])
        await finish_run(db, run_id, "succeeded", 500)
        await set_chosen_checkpoint(db, run_id, checkpoint_ids[1])
        await set_active_checkpoint(db, pet.id, checkpoint_ids[1])
        await jobs.finish_job(db, training.id, "succeeded", {"run_id": run_id})

        # A generation job: its pictures staged, then moved in by record_generation.
        painting = await jobs.submit_job(db, settings, "generate", "guild-1", "bob",
                                         {"request": {"prompt": "Thor on a throne"}})
        await jobs.claim_next_job(db, "worker-a")
        staged = data.root / "staged"
        staged.mkdir()
        (staged / "0.png").write_bytes(tiny_png(40))
        (staged / "1.png").write_bytes(tiny_png(200))
        generation = await record_generation(
            db, data, staged, guild_id="guild-1", pet_id=pet.id, checkpoint_id=checkpoint_ids[1],
            prompt="a photo of TOK cat on a throne", negative_prompt="blurry", seed=1234, steps=30, guidance=5.0,
            width=1024, height=1024, lora_scale=0.9, requested_by="bob",
        )
        await jobs.set_links(db, painting.id, generation_id=generation.id)
        await jobs.finish_job(db, painting.id, "succeeded", {"generation_id": generation.id, "files": generation.files})

        # One generation still waiting, one cancelled while queued.
        waiting = await jobs.submit_job(
            db, settings, "generate", "guild-1", "carol", {"request": {"prompt": "Thor asleep"}}
        )
        await add_discord_job(db, waiting.id, "guild-1", "channel-9", "carol")
        dropped = await jobs.submit_job(
            db, settings, "generate", "guild-1", "dave", {"request": {"prompt": "Thor wet"}}
        )
        await jobs.request_cancel(db, dropped.id)

        last = await jobs.last_event_id(db)
        await set_relay_position(db, last)
        await update_guild_settings(db, "guild-1", gallery_channel_id="gallery-7", vote_emoji="🐾",
                                    who_may_train="managers", max_steps=1500)
    finally:
        await db.close()
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.execute("PRAGMA journal_mode = DELETE")
    connection = sqlite3.connect(path)
    connection.execute("VACUUM")
    connection.close()


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.unlink(missing_ok=True)
    asyncio.run(write(target))
    print(f"wrote {target} ({target.stat().st_size} bytes)")
