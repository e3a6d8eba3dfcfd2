"""End to end: pictures the safety check flags, as members see them in Discord.

`pawtrait bot` with its worker (real processes, the tiny SDXL) against the fake Discord, embedded.
The story first paints two pictures with a checker that flags nothing, then restarts the bot
with a tiny checker whose one concept is the first picture's own embedding: painted again,
exactly that picture is flagged, and the server's `safety` setting and the channel decide
what members see. The tests run in order and share one server and one bot process.
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import torch
from people_helpers import person_clip
from PIL import Image

from config.settings import Settings
from engine.gpu.safety.checker import load_safety_checker
from engine.gpu.safety.tiny import make_safety_checker
from storage.db import open_database

from bot_harness import BotProcess, bot_process, fake_and_installation, query, running
from fake_discord import FakeDiscord, StoredMessage
from fake_discord.payloads import Channel, Guild, Member
from photo_samples import jpeg

pytestmark = pytest.mark.asyncio(loop_scope="module")

PNG = b"\x89PNG\r\n\x1a\n"
PROMPT = "a castle on a hill"


@dataclass
class World:
    fake: FakeDiscord
    bot: BotProcess
    folder: Path
    settings: Settings
    cats: Guild
    alice: Member
    mod: Member
    general: Channel
    after_dark: Channel  # age-restricted
    gallery: Channel


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    fake, folder, settings = await fake_and_installation(request)
    cats = fake.add_guild("Cat Club", owner="alice")
    bot = bot_process(settings, fake, folder)
    world = World(
        fake=fake, bot=bot, folder=folder, settings=settings, cats=cats, alice=cats.members[cats.owner_id],
        mod=fake.add_moderator(cats, "mod"), general=fake.channel(cats, "general"),
        after_dark=fake.add_channel(cats, "after-dark", nsfw=True), gallery=fake.add_channel(cats, "gallery"),
    )
    async with running(bot, fake):
        yield world


async def paint(world: World, channel: Channel, member: Member | None = None, **options) -> tuple[StoredMessage, object]:
    """/imagine PROMPT in `channel`; returns its message once it shows the finished pictures, and the command."""
    fake = world.fake
    record = await fake.slash(world.cats, member or world.alice, "imagine", channel=channel, prompt=PROMPT, steps=2,
                              **options)
    queued = await fake.reply(record, timeout=30)
    done = await fake.wait_until(
        lambda: "pawtrait:gen:reroll" in " ".join(fake.messages[queued.id].custom_ids()) and fake.messages[queued.id],
        120, "the finished pictures",
    )
    return done, record


async def audit_of(world: World, command: str) -> list[dict]:
    """The newest audit line the worker wrote for `command` (a screening), as an operator reads it."""
    db = await open_database(world.settings.database_url)
    try:
        rows = await query(db, "SELECT * FROM audit_log WHERE command = :command ORDER BY id DESC", command=command)
    finally:
        await db.close()
    return [dict(row) for row in rows[:1]]


def variation_buttons(message: StoredMessage) -> list[str]:
    return [custom_id for custom_id in message.custom_ids() if custom_id.startswith("pawtrait:vary:")]


async def test_teach_says_when_the_photos_are_checked_for_people(world: World) -> None:
    record = await world.fake.slash(world.cats, world.alice, "teach", name="Mochi", photo1=("mochi.jpg", jpeg(1)),
                                    photo2=("me-and-mochi.jpg", jpeg(2)), **{"class": "cat"})
    text = (await world.fake.reply(record, timeout=30)).text()
    assert "When a training starts, the GPU first checks that the photos show your pet, not a person" in text


async def test_the_first_picture_is_flagged_once_the_checker_knows_it(world: World) -> None:
    art, _ = await paint(world, world.general, seed=7, count=2)
    assert sorted(art.files) == ["1-seed-7.png", "2-seed-8.png"]  # nothing is flagged by the default checker
    first = Image.open(io.BytesIO(art.files["1-seed-7.png"])).convert("RGB")
    plain = load_safety_checker(str(make_safety_checker(world.folder / "plain")))
    flags = make_safety_checker(world.folder / "flags", flag=plain.embeddings([first]))
    await world.bot.stop()
    await world.bot.start(world.fake, PAWTRAIT_SAFETY_MODEL=str(flags))


async def test_standard_withholds_a_flagged_picture_outside_age_restricted_channels(world: World) -> None:
    art, _ = await paint(world, world.general, seed=7, count=2)
    assert list(art.files) == ["2-seed-8.png"] and art.files["2-seed-8.png"].startswith(PNG)
    assert "🚫 Image 1 was withheld." in art.text() and "safety" not in art.text()  # only that it was withheld
    [verdict] = await audit_of(world, "picture screening")
    assert (verdict["verdict"], verdict["detail"], verdict["prompt"]) == ("flagged", "pictures: 2 screened, flagged: 1", PROMPT)
    assert variation_buttons(art) == [f"pawtrait:vary:{art.button('Reroll').rsplit(':', 1)[1]}:2"]

    configured = await world.fake.reply(await world.fake.slash(world.cats, world.mod, "settings change", gallery=world.gallery))
    assert "safety: standard" in configured.text()
    shared = await world.fake.reply(await world.fake.click(world.alice, art, art.button("Share")))
    assert "Shared to" in shared.text()
    [posted] = world.fake.channel_messages(world.gallery)
    assert list(posted.files) == ["2-seed-8.png"]  # the flagged picture never goes to the gallery


async def test_standard_shows_it_as_a_spoiler_in_an_age_restricted_channel_and_its_threads(world: World) -> None:
    art, _ = await paint(world, world.after_dark, seed=7, count=2)
    assert sorted(art.files) == ["2-seed-8.png", "SPOILER_1-seed-7.png"] and "withheld" not in art.text()
    thread = await world.fake.add_thread(world.after_dark, "cats at night")
    in_thread, _ = await paint(world, thread, seed=7)
    assert list(in_thread.files) == ["SPOILER_1-seed-7.png"]
    refused = await world.fake.reply(await world.fake.click(world.alice, in_thread, in_thread.button("Share")))
    assert refused.ephemeral and "flagged these images" in refused.text() and "can't be shared" in refused.text()
    assert len(world.fake.channel_messages(world.gallery)) == 1


async def test_a_flagged_picture_shown_as_a_spoiler_gets_no_variation_button_and_no_forged_one(world: World) -> None:
    """Before, an age-restricted channel under `standard` showed V1 under the flagged (spoilered)
    picture, and pressing it (on messages posted before this fix, or forged onto a message, as
    test_bot_moderation_e2e forges buttons) queued a variation painted from the flagged picture."""
    fake = world.fake
    art, _ = await paint(world, world.after_dark, seed=7, count=2)
    generation = art.button("Reroll").rsplit(":", 1)[1]
    assert "SPOILER_1-seed-7.png" in art.files and variation_buttons(art) == [f"pawtrait:vary:{generation}:2"]
    db = await open_database(world.settings.database_url)
    try:
        before = len(await query(db, "SELECT id FROM jobs"))
        for message in (art, (await paint(world, world.general, seed=7))[0]):
            forged = f"pawtrait:vary:{message.button('Reroll').rsplit(':', 1)[1]}:1"
            button = {"type": 2, "style": 2, "label": "V1", "custom_id": forged}
            carrier = await fake.post(world.alice, world.after_dark, "V1",
                                      components=[{"type": 1, "components": [button]}])
            refused = await fake.reply(await fake.click(world.alice, carrier, forged), timeout=30)
            assert refused.ephemeral and "flagged image 1" in refused.text(), refused.text()
        assert len(await query(db, "SELECT id FROM jobs")) == before + 1  # the second painting only
    finally:
        await db.close()


async def test_a_reroll_of_a_flagged_picture_is_screened_on_its_own(world: World) -> None:
    art, _ = await paint(world, world.general, seed=7)
    assert not art.files and "🚫 Image 1 was withheld." in art.text() and not variation_buttons(art)
    fake = world.fake
    reroll = await fake.reply(await fake.click(world.alice, art, art.button("Reroll")), timeout=30)
    again = await fake.wait_until(
        lambda: "pawtrait:gen:reroll" in " ".join(fake.messages[reroll.id].custom_ids()) and fake.messages[reroll.id],
        120, "the rerolled picture",
    )
    [(name, data)] = again.files.items()
    assert re.fullmatch(r"1-seed-\d+\.png", name) and name != "1-seed-7.png" and data.startswith(PNG)
    assert "withheld" not in again.text()


async def test_strict_never_posts_it_and_tells_the_member_alone(world: World) -> None:
    fake = world.fake
    strict = await fake.reply(await fake.slash(world.cats, world.mod, "settings change", safety="strict"))
    assert strict.ephemeral and "safety: strict" in strict.text()
    art, record = await paint(world, world.after_dark, seed=7, count=2)
    assert list(art.files) == ["2-seed-8.png"] and "🚫 Image 1 was withheld." in art.text()
    [notice] = await fake.wait_until(lambda: fake.followups(record), 20, "the ephemeral notice")
    assert notice.ephemeral and "flagged image 1" in notice.text() and "strict" in notice.text()


async def test_a_training_with_a_photo_of_a_person_does_not_start_and_names_it(
    world: World, scoring_models: tuple[Path, Path]
) -> None:
    fake = world.fake
    db = await open_database(world.settings.database_url)
    try:
        photos = await query(db, "SELECT original_name, prepared_path FROM photos ORDER BY id")
    finally:
        await db.close()
    assert [row["original_name"] for row in photos] == ["mochi.jpg", "me-and-mochi.jpg"]
    crops = [Image.open(world.settings.data_dir / row["prepared_path"]).convert("RGB") for row in photos]
    people = person_clip(scoring_models, world.folder / "people-clip", crops, person=1, class_noun="cat")
    await world.bot.stop()
    await world.bot.start(fake, PAWTRAIT_SCORE_CLIP=str(people), PAWTRAIT_SAFETY_MODEL=str(world.folder / "flags"))
    reply = await fake.reply(await fake.slash(world.cats, world.alice, "train", pet="Mochi", steps=2), timeout=30)
    assert "will train for 2 steps" in reply.text()
    thread = await fake.wait_until(lambda: next((t for t in fake.threads(world.cats) if "Mochi" in t.name), None), 20,
                                   "the training thread")
    [failed] = await fake.wait_until(
        lambda: [m for m in fake.channel_messages(thread) if "the training failed" in m.content], 120, "the refusal"
    )
    assert "pets, not people" in failed.content and "`me-and-mochi.jpg`: its subject looks like a person" in failed.content
    assert "`mochi.jpg`" not in failed.content and "`/teach` it again without these photos" in failed.content
    [refused] = await audit_of(world, "photo screening")
    assert refused["verdict"] == "refused" and "me-and-mochi.jpg" in refused["detail"]


async def train_in(world: World, channel: Channel, name: str, photo_seed: int) -> list[StoredMessage]:
    """Teach `name` from one photo and train it 2 steps from `channel`; the thread's validation posts."""
    fake = world.fake
    await fake.reply(await fake.slash(world.cats, world.alice, "teach", channel=channel, name=name,
                                      photo1=(f"{name}.jpg", jpeg(photo_seed)), **{"class": "cat"}), timeout=30)
    await fake.reply(await fake.slash(world.cats, world.alice, "train", channel=channel, pet=name, steps=2), timeout=30)
    thread = await fake.wait_until(lambda: next((t for t in fake.threads(world.cats) if name in t.name), None), 20,
                                   f"{name}'s training thread")
    await fake.wait_until(lambda: [m for m in fake.channel_messages(thread) if "is trained" in m.content], 180,
                          f"{name}'s finish message")
    return [m for m in fake.channel_messages(thread) if m.content.startswith("🖼️")]


async def test_validation_images_follow_the_policy_and_the_thread_follows_its_channel(world: World) -> None:
    fake = world.fake
    everything = make_safety_checker(world.folder / "flags-everything", flag=torch.ones(1, 16), threshold=-1.0)
    await world.bot.stop()
    await world.bot.start(fake, PAWTRAIT_SAFETY_MODEL=str(everything))
    strict = await train_in(world, world.general, "Tom", 70)  # the server is strict since an earlier test
    assert strict and all(not m.files and "🚫 This picture was withheld." in m.content for m in strict)
    assert all("react" not in m.content and not m.reactions for m in strict)  # nothing to vote on

    await fake.reply(await fake.slash(world.cats, world.mod, "settings change", safety="standard"))
    spoilers = await train_in(world, world.after_dark, "Luna", 71)
    assert spoilers and all(list(m.files)[0].startswith("SPOILER_") and "withheld" not in m.content for m in spoilers)
