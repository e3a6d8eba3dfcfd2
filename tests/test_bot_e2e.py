"""End to end: `pawtrait bot` (the unmodified discord.py client and real worker processes on
the tiny model and tiny scoring models) against the fake Discord. Members teach, train,
vote, pick, imagine, share, download LoRAs and forget, in one story; the bot is restarted
in the middle of a training.

The tests run in order and share one server, one bot process and one installation. The
story runs twice: embedded (SQLite and a data folder; the bot starts its worker) and
distributed (PostgreSQL and an S3 bucket; the bot and a `pawtrait worker` run as if on two
hosts, each with a local folder of its own).
"""

from __future__ import annotations

import asyncio
import io
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from engine.usecases.scoring.suggest import suggest
from storage import keys, runs
from storage.connect import file_store
from storage.db import Database, open_database
from storage.files import FileStore
from storage.scores import run_scores

from bot_harness import BotProcess, Cast, bot_process, fake_and_installation, query, running, wait_for_rows
from conftest import MODES, settings_env
from fake_discord import FakeDiscord, StoredMessage
from fake_discord.payloads import Channel
from photo_samples import encode, jpeg, varied_photo

pytestmark = pytest.mark.asyncio(loop_scope="module")

PNG = b"\x89PNG\r\n\x1a\n"
TRAIN_STEPS = 6  # a checkpoint and validation images every 2 steps (engine.usecases.training.params.checkpoint_interval)


@dataclass
class World(Cast):  # alice owns the pet
    fake: FakeDiscord
    bot: BotProcess
    db: Database
    store: FileStore


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=MODES)
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    fake, folder, settings = await fake_and_installation(request)
    cast = Cast.on(fake)
    worker_env = None
    if request.param == "distributed":
        worker_env = dict(settings_env(settings), PAWTRAIT_DATA_DIR=str(folder / "worker-host"),
                          PAWTRAIT_TEST_THREADS="1")
    bot = bot_process(settings, fake, folder, worker_env)
    db = await open_database(settings.database_url)
    world = World(**vars(cast), fake=fake, bot=bot, db=db, store=file_store(settings))
    try:
        async with running(bot, fake):
            yield world
    finally:
        await db.close()


async def answer(world: World, record, timeout: float = 30, check=None) -> StoredMessage:
    return await world.fake.reply(record, timeout=timeout, check=check)


def text_of(message: StoredMessage) -> str:
    return message.text()


async def test_commands_are_synced_once(world: World) -> None:
    fake = world.fake
    assert len(fake.command_syncs) == 1 and fake.command_syncs[0][0] is None  # one global upload
    names = {command["name"] for command in fake.global_commands}
    assert {"teach", "train", "pick", "lora", "imagine", "pets", "queue", "cancel", "forget", "settings", "audit",
            "Teach Pawtrait"} <= names


async def test_teach_through_attachment_options(world: World) -> None:
    fake = world.fake
    photos = {f"photo{i}": (f"mochi-{i}.jpg", jpeg(i)) for i in range(1, 8)}
    photos["photo8"] = ("notes.jpg", b"these are my notes, not a photo")
    record = await fake.slash(world.cats, world.alice, "teach", name="Mochi", **{"class": "cat"}, **photos)
    reply = await answer(world, record)
    text = text_of(reply)
    assert "New pet **Mochi** (cat): 7 photos added, 7 in total" in text
    assert "❌ `notes.jpg`" in text
    assert "/train pet:Mochi" in text
    sheet = reply.files["contact-sheet.png"]
    assert sheet.startswith(PNG)
    # Autocomplete offers the new pet in this server only.
    choices = await fake.autocomplete(world.cats, world.bob, "train", "pet", pet="mo")
    assert [c["name"] for c in choices] == ["Mochi"]
    assert await fake.autocomplete(world.dogs, world.carol, "imagine", "pet", prompt="x", pet="") == []


async def test_teach_a_message_of_photos_with_the_context_menu(world: World) -> None:
    fake = world.fake
    files = [(f"mochi-{i}.jpg", jpeg(i)) for i in range(8, 13)]
    files.append(("again.jpg", encode(varied_photo(1), "JPEG", quality=70)))  # photo 1, re-encoded
    files.append(("vet-bill.pdf", b"%PDF-1.4\n1 0 obj << >> endobj\n%%EOF"))
    post = await fake.post(world.alice, world.general, "more of Mochi", files)
    menu = await fake.context_menu(world.cats, world.alice, "Teach Pawtrait", post)
    submit = await fake.submit_modal(menu, world.alice, {})  # prefilled with Mochi / cat
    text = text_of(await answer(world, submit))
    assert "**Mochi** (cat): 5 photos added, 12 in total" in text
    assert "⏭️ `again.jpg`" in text and "mochi-1.jpg" in text
    assert "❌ `vet-bill.pdf`" in text


async def test_only_the_owner_trains_or_forgets_and_pets_stay_in_their_server(world: World) -> None:
    fake = world.fake
    for name in ("train", "forget"):
        reply = await answer(world, await fake.slash(world.cats, world.bob, name, pet="Mochi"))
        assert reply.ephemeral and f"<@{world.alice.id}>'s pet" in reply.text() and "only they" in reply.text()
    record = await fake.slash(world.cats, world.bob, "teach", name="mochi", photo1=("mine.jpg", jpeg(40)),
                              **{"class": "cat"})
    reply = await answer(world, record)
    assert reply.ephemeral and "choose another name" in reply.text()
    reply = await answer(world, await fake.slash(world.dogs, world.carol, "train", pet="Mochi"))
    assert reply.ephemeral and "no pet called **Mochi** in this server" in reply.text()
    reply = await answer(world, await fake.slash(world.dogs, world.carol, "imagine", prompt="a photo of TOK", pet="Mochi"))
    assert reply.ephemeral and "no pet called **Mochi**" in reply.text()
    assert not await query(world.db, "SELECT id FROM jobs")


def thread_messages(world: World, thread: Channel) -> list[StoredMessage]:
    return world.fake.channel_messages(thread)


def validation_messages(world: World, thread: Channel, step: int) -> list[StoredMessage]:
    label = "before training" if step == 0 else f"step {step}"
    return [m for m in thread_messages(world, thread) if m.content.startswith(f"🖼️ **{label}**")]


async def test_training_thread_survives_a_bot_restart_and_votes_pick_the_checkpoint(world: World) -> None:
    fake, bot = world.fake, world.bot
    record = await fake.slash(world.cats, world.alice, "train", pet="Mochi", steps=TRAIN_STEPS)
    reply = await answer(world, record)
    assert f"**Mochi** will train for {TRAIN_STEPS} steps" in reply.text() and not reply.ephemeral
    thread = await fake.wait_until(lambda: next(iter(fake.threads(world.cats)), None), 20, "the training thread")
    assert thread.parent_id == world.general.id and "Mochi" in thread.name
    status = await fake.wait_until(lambda: next(iter(thread_messages(world, thread)), None), 20, "the status message")

    # Restart the bot (and its worker) once the step-2 validation images exist: mid-training.
    reached = await wait_for_rows(
        fake, world.db,
        # The event, not just the rows: the relay posts from events, and the rows come first.
        "SELECT 'validation' AS what, '' AS error FROM job_events "
        "WHERE kind = 'validation' AND data LIKE '{\"step\"\\:2,%' "  # \\: a colon, not a parameter
        "UNION ALL SELECT 'failed', error FROM jobs WHERE status = 'failed'",
        180, "the step-2 validation images",
    )
    assert reached[0]["what"] == "validation", f"the training failed: {reached[0]['error']}"
    await bot.stop()
    run = (await query(world.db, "SELECT status, step FROM training_runs"))[0]
    assert run["step"] < TRAIN_STEPS, "the run finished before the restart; nothing was interrupted"

    # Back without a worker first: the relay continues, and votes on images posted by the
    # previous process (no message cache) are counted.
    await bot.start(fake, PAWTRAIT_WORKERS="0")
    assert len(fake.command_syncs) == 1, "unchanged commands were uploaded again"
    step2 = await fake.wait_until(lambda: (found := validation_messages(world, thread, 2))[1:] and found, 30,
                                  "both step-2 validation images")
    assert all(m.files and next(iter(m.files.values())).startswith(PNG) for m in step2)
    assert validation_messages(world, thread, 0), "the 'before training' images were not posted"
    for voter in (world.bob, world.mod):
        await fake.react(voter, step2[0], "⭐")
    await fake.react(world.bob, step2[1], "👍")  # not the vote emoji
    await fake.react(world.mod, step2[1], "⭐")
    await wait_for_rows(fake, world.db, "SELECT count(*) FROM votes HAVING count(*) = 3", 20, "three votes")
    await fake.react(world.mod, step2[1], "⭐", add=False)  # changed their mind
    await wait_for_rows(fake, world.db, "SELECT count(*) FROM votes HAVING count(*) = 2", 20, "two votes left")
    # A member a moderator denied cannot vote: their star is not counted, before or after others'.
    await answer(world, await fake.slash(world.cats, world.mod, "settings deny", member=world.bob))
    await fake.react(world.bob, step2[1], "⭐")
    await fake.react(world.mod, step2[1], "⭐")
    await wait_for_rows(fake, world.db, "SELECT count(*) FROM votes HAVING count(*) = 3", 20, "the moderator's vote")
    await fake.react(world.mod, step2[1], "⭐", add=False)
    await wait_for_rows(fake, world.db, "SELECT count(*) FROM votes HAVING count(*) = 2", 20, "two votes again")
    bob_votes = await query(world.db, "SELECT count(*) AS n FROM votes WHERE user_id = :user", user=str(world.bob.id))
    assert bob_votes[0]["n"] == 1, "a denied member's vote was counted"
    await answer(world, await fake.slash(world.cats, world.mod, "settings allow", member=world.bob))
    edits_before = len(fake.messages[status.id].history)
    await bot.stop()

    # With its worker again, the run resumes from its checkpoint and finishes.
    await bot.start(fake)
    done = await fake.wait_until(
        lambda: [m for m in thread_messages(world, thread) if "is trained" in m.content], 240, "the finish message"
    )
    assert f"<@{world.alice.id}>" in done[0].content
    assert "step 2" in done[0].content and "most votes (2 votes)" in done[0].content
    assert done[0].files["scores.png"].startswith(PNG)  # the chart of scores by step
    final = fake.messages[status.id]
    assert len(final.history) > edits_before and "Training finished" in final.content
    assert any("Step **" in version["content"] for version in final.history), "no progress edit was shown"
    assert re.search(r"📊 Step \d+: likeness -?\d\.\d\d · prompts -?\d\.\d\d \(untrained: likeness", final.content)
    assert validation_messages(world, thread, TRAIN_STEPS)
    started = (await query(world.db, "SELECT count(*) AS n FROM job_events WHERE kind = 'started'"))[0]["n"]
    assert started >= 2, "the training did not resume after the restart"
    active = await query(world.db, "SELECT c.step FROM pets p JOIN checkpoints c ON c.id = p.active_checkpoint_id")
    assert active[0]["step"] == 2


async def test_pick_is_for_the_owner(world: World) -> None:
    fake = world.fake
    refused = await answer(world, await fake.slash(world.cats, world.bob, "pick", pet="Mochi", step=4))
    assert refused.ephemeral and "only they" in refused.text()
    missing = await answer(world, await fake.slash(world.cats, world.alice, "pick", pet="Mochi", step=3))
    assert missing.ephemeral and "no checkpoint at step 3" in missing.text()
    picked = await answer(world, await fake.slash(world.cats, world.alice, "pick", pet="Mochi", step=4))
    assert "now uses the checkpoint from step 4" in picked.text()
    active = await query(world.db, "SELECT c.step FROM pets p JOIN checkpoints c ON c.id = p.active_checkpoint_id")
    assert active[0]["step"] == 4


async def test_the_owner_can_keep_a_pet_to_themselves(world: World) -> None:
    fake = world.fake
    private = await answer(world, await fake.slash(world.cats, world.alice, "sharing", pet="Mochi", others_may_imagine=False))
    assert private.ephemeral and "only its owner" in private.text()
    refused = await answer(world, await fake.slash(world.cats, world.bob, "imagine", prompt="TOK in the snow"))
    assert refused.ephemeral and "keeps **Mochi** to themselves" in refused.text()
    await answer(world, await fake.slash(world.cats, world.alice, "sharing", pet="Mochi", others_may_imagine=True))
    listing = await answer(world, await fake.slash(world.cats, world.bob, "pets"))
    assert "Mochi" in listing.text() and "12 photos" in listing.text() and "trained" in listing.text()
    assert listing.files and next(iter(listing.files.values())).startswith(PNG)  # the thumbnail


def finished_images(message: StoredMessage) -> bool:
    return bool(message.files) and "pawtrait:gen:reroll" in " ".join(message.custom_ids())


def seeds_and_size(message: StoredMessage) -> tuple[list[int], str]:
    """The seeds and the width×height a finished images message reports."""
    return [int(seed) for seed in re.findall(r"\bseeds? (\d+)", message.text())], re.search(r"\d+×\d+", message.text())[0]


async def test_imagine_reroll_share_and_delete(world: World) -> None:
    fake = world.fake
    record = await fake.slash(world.cats, world.alice, "imagine", prompt="a photo of TOK cat on the moon", seed=7, steps=3)
    queued = await answer(world, record)
    assert "job #" in queued.text() and not queued.ephemeral
    art = await fake.wait_until(lambda: finished_images(fake.messages[queued.id]) and fake.messages[queued.id],
                                120, "the finished images")
    assert "seed 7" in art.text() and "Mochi" in art.text()
    assert all(data.startswith(PNG) for data in art.files.values())
    job_id = int(re.search(r"job #(\d+)", queued.history[0]["content"])[1])
    if await query(world.db, "SELECT 1 FROM job_events WHERE job_id = :job AND kind = 'preview'", job=job_id):
        assert any("Painting" in v["content"] and v["attachments"] for v in art.history), "no preview was shown"

    # Bob has no pet of his own: TOK means the server's only pet; a random seed is reported.
    record = await fake.slash(world.cats, world.bob, "imagine", prompt="TOK sleeping", steps=3)
    bobs = await answer(world, record)
    bobs = await fake.wait_until(lambda: finished_images(fake.messages[bobs.id]) and fake.messages[bobs.id], 120,
                                 "bob's images")
    assert "Mochi" in bobs.text() and "seed " in bobs.text()

    reroll = await answer(world, await fake.click(world.bob, art, art.button("Reroll")))
    rerolled = await fake.wait_until(lambda: finished_images(fake.messages[reroll.id]) and fake.messages[reroll.id],
                                     120, "the rerolled images")
    assert seeds_and_size(rerolled)[0] != [7] and "on the moon" in rerolled.text()

    # V1 under the picture: a variation of that image, the same prompt and pet, a new seed, the same size.
    assert art.button("V1") and "V2" not in str(art.payload["components"])  # one image, one V button
    source_id = int(art.button("Reroll").rsplit(":", 1)[1])
    vary = await answer(world, await fake.click(world.bob, art, art.button("V1")))
    assert "variations of image 1" in vary.text() and not vary.ephemeral
    varied = await fake.wait_until(lambda: finished_images(fake.messages[vary.id]) and fake.messages[vary.id],
                                   120, "the variation")
    assert f"variation of image 1 of generation #{source_id}" in varied.text()
    assert "on the moon" in varied.text() and "Mochi" in varied.text()
    (seed,), size = seeds_and_size(varied)
    assert seed != 7 and size == seeds_and_size(art)[1]
    assert next(iter(varied.files.values())).startswith(PNG) and varied.button("V1")

    no_gallery = await answer(world, await fake.click(world.bob, art, art.button("Share")))
    assert no_gallery.ephemeral and "no gallery channel" in no_gallery.text()
    configured = await answer(world, await fake.slash(world.cats, world.mod, "settings change", gallery=world.gallery))
    assert f"<#{world.gallery.id}>" in configured.text()
    shared = await answer(world, await fake.click(world.bob, art, art.button("Share")))
    assert "Shared to" in shared.text()
    posted = fake.channel_messages(world.gallery)
    assert len(posted) == 1 and "on the moon" in posted[0].content
    assert next(iter(posted[0].files.values())).startswith(PNG)

    refused = await answer(world, await fake.click(world.bob, art, art.button("Delete")))
    assert refused.ephemeral and "Only the member who asked" in refused.text()
    await fake.click(world.alice, art, art.button("Delete"))
    await fake.wait_until(lambda: fake.messages[art.id].deleted, 20, "the images to be deleted")


def generation_of(message: StoredMessage) -> int:
    return int(message.button("Reroll").rsplit(":", 1)[1])


def pixels(message: StoredMessage) -> bytes:
    with Image.open(io.BytesIO(next(iter(message.files.values())))) as image:
        return image.convert("RGB").tobytes()


async def test_reroll_and_variations_paint_with_the_checkpoint_of_the_original(world: World) -> None:
    """Mochi paints with its step-4 checkpoint, then the owner picks step 6: a reroll and a
    variation of that picture still paint with step 4, and the reroll is the picture step 4
    paints from its seed. Once a picture's checkpoint is deleted, its reroll says so."""
    fake = world.fake

    async def painted(record) -> StoredMessage:
        queued = await answer(world, record)
        return await fake.wait_until(lambda: finished_images(fake.messages[queued.id]) and fake.messages[queued.id],
                                     120, "the finished images")

    async def imagine(seed: int) -> StoredMessage:
        return await painted(await fake.slash(world.cats, world.alice, "imagine", prompt="a photo of TOK cat in a hat",
                                              seed=seed, steps=3))

    async def checkpoint_of(message: StoredMessage) -> dict:
        [row] = await query(world.db, "SELECT c.id, c.step, c.path FROM generations g JOIN checkpoints c "
                                      "ON c.id = g.checkpoint_id WHERE g.id = :id", id=generation_of(message))
        return row

    async def pick(step: int) -> None:
        picked = await answer(world, await fake.slash(world.cats, world.alice, "pick", pet="Mochi", step=step))
        assert f"now uses the checkpoint from step {step}" in picked.text()

    art = await imagine(11)
    assert (await checkpoint_of(art))["step"] == 4
    await pick(6)
    rerolled = await painted(await fake.click(world.bob, art, art.button("Reroll")))
    varied = await painted(await fake.click(world.bob, art, art.button("V1")))
    assert [(await checkpoint_of(m))["step"] for m in (rerolled, varied)] == [4, 4]
    (seed,), _ = seeds_and_size(rerolled)
    with_six = await imagine(seed)
    assert (await checkpoint_of(with_six))["step"] == 6
    await pick(4)
    with_four = await imagine(seed)
    assert pixels(rerolled) == pixels(with_four) != pixels(with_six)

    # A training's pruning deletes step 6 (no pet uses it, its run chose another): the reroll
    # of a picture painted with it cannot be made again.
    six = await checkpoint_of(with_six)
    images = await runs.delete_checkpoint(world.db, six["id"])
    await world.store.delete([image.path for image in images])
    await world.store.delete_prefix(six["path"])
    gone = await answer(world, await fake.click(world.bob, with_six, with_six.button("Reroll")))
    assert gone.ephemeral and "was deleted" in gone.text() and "paint anew with `/imagine`" in gone.text()


async def test_forget_asks_then_deletes_everything(world: World) -> None:
    fake = world.fake
    pet_id = (await query(world.db, "SELECT id FROM pets"))[0]["id"]
    stored = [item.key for item in await world.store.list("runs")] + [item.key for item in await world.store.list("generations")]
    assert await world.store.list(keys.pet_prefix(pet_id)) and stored
    ask = await answer(world, await fake.slash(world.cats, world.alice, "forget", pet="Mochi"))
    assert ask.ephemeral and "12 photos" in ask.text()
    confirm = await fake.click(world.alice, ask, ask.button("forget everything"))
    await fake.wait_until(lambda: "Forgot **Mochi**" in (fake.original(confirm) or ask).text(), 30, "the pet to be forgotten")
    assert not await query(world.db, "SELECT id FROM pets")
    assert not await world.store.list(keys.pet_prefix(pet_id))  # photos and contact sheet
    assert not [key for key in stored if await world.store.exists(key)]  # checkpoints, validation images, pictures
    gone = await answer(world, await fake.slash(world.cats, world.alice, "imagine", prompt="TOK", pet="Mochi"))
    assert gone.ephemeral and "no pet called **Mochi**" in gone.text()


async def test_a_dev_guild_gets_its_commands_at_once(world: World) -> None:
    fake, bot = world.fake, world.bot
    await bot.stop()
    syncs = len(fake.command_syncs)
    await bot.start(fake, PAWTRAIT_WORKERS="0", PAWTRAIT_DEV_GUILD=world.cats.id)
    assert len(fake.command_syncs) == syncs + 1 and fake.command_syncs[-1][0] == world.cats.id
    assert fake.command("pets", world.cats.id).get("guild_id") == world.cats.id
    reply = await answer(world, await fake.slash(world.cats, world.bob, "pets"))
    assert reply.ephemeral and "No pets here yet" in reply.text()
    # Buttons posted by the previous process still work (their pictures went with the pet).
    old = next(m for m in fake.messages.values() if not m.deleted and "pawtrait:gen:share" in " ".join(m.custom_ids()))
    reply = await answer(world, await fake.click(world.bob, old, old.button("Share")))
    assert reply.ephemeral and "These images were deleted" in reply.text()


async def test_queue_limits_and_cancel(world: World) -> None:
    """With no worker running (the previous test's bot), jobs wait: positions, the per-member
    limit, /queue and /cancel."""
    fake = world.fake
    waiting = []
    for index in range(3):  # PAWTRAIT_MAX_QUEUED_GENERATIONS defaults to 3
        record = await fake.slash(world.cats, world.bob, "imagine", prompt=f"a castle, take {index}", steps=3)
        waiting.append(await answer(world, record))
    assert "next in line" in waiting[0].text() and "number 3 in the queue" in waiting[2].text()
    refused = await answer(world, await fake.slash(world.cats, world.bob, "imagine", prompt="one more castle"))
    assert refused.ephemeral and "3 generations waiting (the limit is 3)" in refused.text()
    listing = await answer(world, await fake.slash(world.cats, world.bob, "queue"))
    assert listing.ephemeral and listing.text().count("← yours") == 3
    other = await answer(world, await fake.slash(world.cats, world.alice, "cancel"))
    assert other.ephemeral and "nothing queued or running" in other.text()
    cancelled = await answer(world, await fake.slash(world.cats, world.bob, "cancel"))
    assert "cancelled" in cancelled.text() and "take 2" in cancelled.text()
    await fake.wait_until(lambda: "Cancelled" in fake.messages[waiting[2].id].content, 20, "the cancelled job's message")


async def test_a_failed_training_says_why_and_mentions_the_owner(world: World) -> None:
    fake, bot = world.fake, world.bot
    for _ in range(2):  # bob's last waiting images: out of the worker's way
        await answer(world, await fake.slash(world.cats, world.bob, "cancel"))
    taught = await answer(world, await fake.slash(world.dogs, world.carol, "teach", name="Rex",
                                                  photo1=("rex.jpg", jpeg(50)), **{"class": "dog"}))
    assert "1 photo added" in taught.text() and "only 1 photo" in taught.text()
    await answer(world, await fake.slash(world.dogs, world.carol, "train", pet="Rex", steps=2))
    # While it waits (no worker runs yet), the file store loses the prepared photos.
    pet_id = (await query(world.db, "SELECT id FROM pets WHERE name = 'Rex'"))[0]["id"]
    await world.store.delete([row["prepared_path"] for row in await query(
        world.db, "SELECT prepared_path FROM photos WHERE pet_id = :pet", pet=pet_id)])
    await bot.stop()
    await bot.start(fake)
    thread = await fake.wait_until(lambda: next(iter(fake.threads(world.dogs)), None), 20, "Rex's training thread")
    failed = await fake.wait_until(
        lambda: [m for m in fake.channel_messages(thread) if "the training failed" in m.content], 120,
        "the failure message",
    )
    assert failed[0].content.startswith(f"<@{world.carol.id}>") and "missing" in failed[0].content
    job_id = (await query(world.db, "SELECT id FROM jobs WHERE status = 'failed'"))[0]["id"]
    assert f"(job #{job_id})" in failed[0].content  # the reference an admin finds the details by in the log


async def test_with_no_votes_the_suggested_checkpoint_is_kept_and_the_owner_downloads_the_lora(world: World) -> None:
    fake = world.fake
    photos = {f"photo{i}": (f"bella-{i}.jpg", jpeg(60 + i)) for i in range(1, 4)}
    await answer(world, await fake.slash(world.dogs, world.carol, "teach", name="Bella", **{"class": "dog"}, **photos))
    await answer(world, await fake.slash(world.dogs, world.carol, "train", pet="Bella", steps=4))
    thread = await fake.wait_until(
        lambda: next((t for t in fake.threads(world.dogs) if "Bella" in t.name), None), 20, "Bella's training thread"
    )
    done = await fake.wait_until(
        lambda: [m for m in fake.channel_messages(thread) if "is trained" in m.content], 180, "the finish message"
    )
    pet_id = (await query(world.db, "SELECT id FROM pets WHERE name = 'Bella'"))[0]["id"]
    run_id = (await query(world.db, "SELECT id FROM training_runs WHERE pet_id = :pet", pet=pet_id))[0]["id"]
    scores = await run_scores(world.db, run_id)
    suggested = suggest(scores.steps, scores.reference, "Bella")
    assert f"nobody voted, so I kept the suggested checkpoint: step {suggested.step} " in done[0].content
    assert done[0].files["scores.png"].startswith(PNG)
    active = await query(world.db, "SELECT c.step FROM pets p JOIN checkpoints c ON c.id = p.active_checkpoint_id "
                                   "WHERE p.id = :pet", pet=pet_id)
    assert active[0]["step"] == suggested.step

    dave = fake.add_member(world.dogs, "dave")
    listing = await answer(world, await fake.slash(world.dogs, dave, "pick", pet="Bella"))  # anyone may look
    assert listing.ephemeral and "`step 2` · likeness" in listing.text() and "`step 4` · likeness" in listing.text()
    assert "✅ in use" in listing.text() and "💡 suggested" in listing.text() and "⭐ 0" in listing.text()
    assert "`untrained` · likeness" in listing.text() and "still follows prompts" in listing.text()

    refused = await answer(world, await fake.slash(world.dogs, dave, "lora", pet="Bella"))
    assert refused.ephemeral and "only they" in refused.text()
    download = await answer(world, await fake.slash(world.dogs, world.carol, "lora", pet="Bella"))
    [(filename, data)] = download.files.items()
    assert download.ephemeral and filename.endswith(f"-step{suggested.step}.safetensors")
    assert "AUTOMATIC1111" in download.text() and "models/Lora" in download.text()
    checkpoint = (await query(world.db, "SELECT path FROM checkpoints WHERE run_id = :run AND step = :step",
                              run=run_id, step=suggested.step))[0]["path"]
    # The file engine/usecases/export makes (test_export loads it in diffusers to the checkpoint's weights).
    assert data == (await world.store.local_path(f"{checkpoint}/download-fp16.safetensors")).read_bytes()
    missing = await answer(world, await fake.slash(world.dogs, world.carol, "lora", pet="Bella", step=3))
    assert missing.ephemeral and "no checkpoint at step 3" in missing.text()

    fake.attachment_size_limit = len(data) - 1  # a server whose upload limit is smaller than the file
    try:
        too_big = await answer(world, await fake.slash(world.dogs, world.carol, "lora", pet="Bella", step=2))
    finally:
        fake.attachment_size_limit = 25 * 1024 * 1024
    assert too_big.ephemeral and not too_big.files
    assert "more than the" in too_big.text() and "pawtrait export Bella --step 2 --guild" in too_big.text()


async def test_pawtrait_bot_explains_a_missing_or_refused_token(world: World, tmp_path: Path) -> None:
    env = dict(world.bot.env, PYTHONPATH=str(Path(__file__).resolve().parent.parent), PAWTRAIT_WORKERS="0")
    env.pop("DISCORD_TOKEN")
    for token, code, words in ((None, 2, "DISCORD_TOKEN is not set"), ("wrong", 1, "Discord refused DISCORD_TOKEN")):
        if token is not None:
            env["DISCORD_TOKEN"] = token
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli.main", "bot", cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == code and words in out.decode(), out.decode()[-2000:]
