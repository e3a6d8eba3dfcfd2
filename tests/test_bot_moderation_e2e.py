"""End to end, moderation: `pawtrait bot` (with a worker on the tiny model) against the fake
Discord. Prompts are screened by channel (an age-restricted one, its threads, an ordinary
one) and by a server's own words; every action leaves exactly one audit line that only
Manage Server reads; a denied member gets nothing from commands or buttons; 🚩 reports
reach the moderators' channel; a moderator's 🗑 removes the gallery copy too.

The tests run in order and share one server and one bot process, embedded and distributed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from storage.db import Database, open_database

from bot_harness import BotProcess, Cast, bot_process, fake_and_installation, query, running
from conftest import MODES
from fake_discord import FakeDiscord, StoredMessage
from fake_discord.payloads import Channel, Member
from photo_samples import jpeg

pytestmark = pytest.mark.asyncio(loop_scope="module")

REFUSED = "This prompt was refused"


@dataclass
class World(Cast):
    fake: FakeDiscord
    bot: BotProcess
    db: Database
    after_dark: Channel  # age-restricted
    mods: Channel


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=MODES)
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    fake, folder, settings = await fake_and_installation(request)
    cast = Cast.on(fake)
    bot = bot_process(settings, fake, folder, PAWTRAIT_MAX_QUEUED_GENERATIONS="20")
    db = await open_database(settings.database_url)
    world = World(
        **vars(cast), fake=fake, bot=bot, db=db, after_dark=fake.add_channel(cast.cats, "after-dark", nsfw=True),
        mods=fake.add_channel(cast.cats, "mods"),
    )
    try:
        async with running(bot, fake):
            yield world
    finally:
        await db.close()


async def answer(world: World, record, timeout: float = 30) -> StoredMessage:
    return await world.fake.reply(record, timeout=timeout)


async def imagine(world: World, member: Member, prompt: str, channel: Channel | None = None) -> StoredMessage:
    return await answer(world, await world.fake.slash(world.cats, member, "imagine", channel=channel,
                                                      prompt=prompt, steps=1))


async def last_line_id(world: World) -> int:
    return (await query(world.db, "SELECT coalesce(max(id), 0) AS id FROM audit_log"))[0]["id"]


async def lines_since(world: World, since: int, count: int) -> list[dict]:
    """The audit lines written after `since`, once there are `count` of them, checking no more follow."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    # What members did, in the order they acted; the worker's screening verdicts are lines of their own.
    sql = ("SELECT * FROM audit_log WHERE id > :since AND command NOT IN ('picture screening', 'training round', "
           "'photo screening') ORDER BY created_at, id")
    while len(found := await query(world.db, sql, since=since)) < count and loop.time() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    found = await query(world.db, sql, since=since)
    assert len(found) == count, [(row["command"], row["verdict"]) for row in found]
    return [dict(row) for row in found]


def finished_images(message: StoredMessage) -> bool:
    return bool(message.files) and "pawtrait:gen:reroll" in " ".join(message.custom_ids())


async def painted(world: World, queued: StoredMessage) -> StoredMessage:
    fake = world.fake
    return await fake.wait_until(lambda: finished_images(fake.messages[queued.id]) and fake.messages[queued.id],
                                 120, "the finished images")


async def test_settings_is_a_group_for_managers(world: World) -> None:
    fake = world.fake
    settings = fake.command("settings")
    assert int(settings["default_member_permissions"]) == 1 << 5  # Manage Server
    assert {o["name"] for o in settings["options"]} == {
        "show", "change", "block-words", "deny", "allow", "mod-channel"}
    refused = await answer(world, await fake.slash(world.cats, world.bob, "settings show"))
    assert refused.ephemeral and "Only members with Manage Server" in refused.text()
    nothing = await answer(world, await fake.slash(world.cats, world.mod, "settings change"))
    assert nothing.ephemeral and "Nothing to change" in nothing.text()
    shown = await answer(world, await fake.slash(world.cats, world.mod, "settings change", max_steps=900))
    assert "max steps: 900" in shown.text() and "moderators' channel: not set" in shown.text()


async def test_prompts_are_screened_by_channel_and_by_the_servers_words(world: World) -> None:
    fake = world.fake
    since = await last_line_id(world)
    jobs_before = len(await query(world.db, "SELECT id FROM jobs"))

    explicit = await imagine(world, world.bob, "a N.U.D.E cat")
    assert explicit.ephemeral and REFUSED in explicit.text() and "age-restricted" in explicit.text()
    assert "nude" not in explicit.text().lower()
    allowed = await imagine(world, world.bob, "a N.U.D.E cat", world.after_dark)
    assert not allowed.ephemeral and "job #" in allowed.text()
    late = await fake.add_thread(world.after_dark, "late night")
    in_thread = await imagine(world, world.bob, "a s3xy cat", late)
    assert not in_thread.ephemeral and "job #" in in_thread.text()
    daytime = await fake.add_thread(world.general, "daytime")
    assert REFUSED in (await imagine(world, world.bob, "a s3xy cat", daytime)).text()
    minors = await imagine(world, world.bob, "a nude child", world.after_dark)
    assert minors.ephemeral and "never paints sexual content involving minors" in minors.text()
    assert (await imagine(world, world.bob, "a classic cat in Sussex with a cockatiel")).text().count("job #") == 1

    refused = await answer(world, await fake.slash(world.cats, world.bob, "settings block-words add", word="moon"))
    assert refused.ephemeral and "Only members with Manage Server" in refused.text()
    record = await fake.slash(world.cats, world.mod, "settings block-words add", word="Moon @everyone")
    added = await answer(world, record)
    assert added.ephemeral and "Moon @everyone" in added.text()
    assert record.callbacks[0]["data"]["allowed_mentions"] == {"parse": []}  # echoed member text never pings
    await answer(world, await fake.slash(world.cats, world.mod, "settings block-words add", word="moon"))
    blocked = await imagine(world, world.bob, "a cat on the m-0-0-n", world.after_dark)
    assert blocked.ephemeral and "moderators have blocked" in blocked.text() and "moon" not in blocked.text().lower()
    listed = await answer(world, await fake.slash(world.cats, world.mod, "settings block-words list"))
    assert "“moon”" in listed.text() and "“Moon @everyone”" in listed.text()
    await answer(world, await fake.slash(world.cats, world.mod, "settings block-words remove", word="MOON"))
    assert "job #" in (await imagine(world, world.bob, "a cat on the moon")).text()
    carol = await answer(world, await fake.slash(world.dogs, world.carol, "imagine", prompt="a dog on the moon @everyone", steps=1))
    assert "job #" in carol.text()  # the Cat Club's words are the Cat Club's

    lines = await lines_since(world, since, 13)  # carol's is in her own server
    assert [(line["command"], line["verdict"]) for line in lines if line["guild_id"] == world.cats.id] == [
        ("imagine", "prompt refused (explicit)"), ("imagine", "prompt allowed"), ("imagine", "prompt allowed"),
        ("imagine", "prompt refused (explicit)"), ("imagine", "prompt refused (minors)"), ("imagine", "prompt allowed"),
        ("settings block-words add", "refused"), ("settings block-words add", "done"),
        ("settings block-words add", "done"), ("imagine", "prompt refused (server words)"),
        ("settings block-words remove", "done"), ("imagine", "prompt allowed"),
    ]
    assert lines[0]["prompt"] == "a N.U.D.E cat" and lines[0]["user_id"] == world.bob.id
    assert lines[1]["job_id"] is not None and lines[0]["job_id"] is None
    assert len(await query(world.db, "SELECT id FROM jobs")) == jobs_before + 5


async def test_every_command_leaves_one_line_that_only_managers_read(world: World) -> None:
    fake = world.fake
    since = await last_line_id(world)
    photos = {f"photo{i}": (f"rex-{i}.jpg", jpeg(100 + i)) for i in range(1, 4)}
    taught = await answer(world, await fake.slash(world.cats, world.alice, "teach", name="Rex", **{"class": "cat"}, **photos))
    assert "New pet **Rex**" in taught.text()
    trained = await answer(world, await fake.slash(world.cats, world.alice, "train", pet="Rex", steps=2))
    assert "will train" in trained.text()
    job_id = int(re.search(r"job #(\d+)", trained.text())[1])
    await answer(world, await fake.slash(world.cats, world.alice, "cancel", job=job_id))
    await answer(world, await fake.slash(world.cats, world.bob, "lora", pet="Rex"))  # not his pet
    await answer(world, await fake.slash(world.cats, world.alice, "pick", pet="Rex", step=1))  # no checkpoint
    await answer(world, await fake.slash(world.cats, world.alice, "sharing", pet="Rex", others_may_imagine=False))
    await answer(world, await fake.slash(world.cats, world.alice, "pets"))  # only looks: no line
    # Manage Server forgets any pet of the server.
    ask = await answer(world, await fake.slash(world.cats, world.mod, "forget", pet="Rex"))
    confirm = await fake.click(world.mod, ask, ask.button("forget everything"))
    await fake.wait_until(lambda: "Forgot **Rex**" in (fake.original(confirm) or ask).text(), 60, "Rex to be forgotten")
    assert not await query(world.db, "SELECT id FROM pets WHERE name = 'Rex'")

    lines = await lines_since(world, since, 8)
    assert [(line["command"], line["user_id"]) for line in lines] == [
        ("teach", world.alice.id), ("train", world.alice.id), ("cancel", world.alice.id), ("lora", world.bob.id),
        ("pick", world.alice.id), ("sharing", world.alice.id), ("forget", world.mod.id),
        ("forget confirm", world.mod.id),
    ]
    assert all(line["pet"] == "Rex" for line in lines if line["command"] != "cancel")
    assert lines[1]["job_id"] == job_id and "steps=2" in lines[1]["detail"]
    assert [line["verdict"] for line in lines] == ["done", "done", "done", "refused", "refused", "done", "done", "done"]
    assert "only they" in lines[3]["detail"]

    refused = await answer(world, await fake.slash(world.cats, world.bob, "audit"))
    assert refused.ephemeral and "Only members with Manage Server" in refused.text()
    log = await answer(world, await fake.slash(world.cats, world.mod, "audit"))
    assert log.ephemeral and len(log.content) <= 2000
    shown = log.content.splitlines()[1:]
    assert "**audit** · refused" in shown[0] and f"<@{world.bob.id}>" in shown[0]  # newest first
    assert "**forget confirm**" in shown[1] and "**forget**" in shown[2]
    assert len(shown) == 25 or "moon" in log.content
    by_pet = await answer(world, await fake.slash(world.cats, world.mod, "audit", pet="rex"))
    assert len(by_pet.content.splitlines()) == 1 + 7 and all("Rex" in line for line in by_pet.content.splitlines()[1:])
    by_bob = await answer(world, await fake.slash(world.cats, world.mod, "audit", member=world.bob))
    assert all(f"<@{world.bob.id}>" in line for line in by_bob.content.splitlines()[1:])
    assert "**lora**" in by_bob.content and "N.U.D.E" in by_bob.content
    other = await answer(world, await fake.slash(world.dogs, world.carol, "audit"))
    assert "a dog on the moon" in other.content and "N.U.D.E" not in other.content  # each server its own log


async def test_reports_moderator_delete_and_strangers(world: World) -> None:
    fake = world.fake
    art = await painted(world, await imagine(world, world.alice, "a cat in a top hat"))
    since = await last_line_id(world)
    unset = await answer(world, await fake.click(world.bob, art, art.button("Report")))
    assert unset.ephemeral and "recorded" in unset.text() and "no moderators' channel" in unset.text()
    set_channel = await answer(world, await fake.slash(world.cats, world.mod, "settings mod-channel", options={"channel": world.mods}))
    assert f"now go to <#{world.mods.id}>" in set_channel.text()
    reported = await answer(world, await fake.click(world.bob, art, art.button("Report")))
    assert "moderators were told" in reported.text()
    [post] = fake.channel_messages(world.mods)
    assert f"/channels/{world.cats.id}/{world.general.id}/{art.id}" in post.content
    assert f"<@{world.bob.id}> reported" in post.content and "a cat in a top hat" in post.content
    assert "**imagine**" in post.content and "prompt allowed" in post.content  # the picture's audit line
    assert "**picture screening** · passed" in post.content  # and the safety check's verdict on it

    await answer(world, await fake.slash(world.cats, world.mod, "settings change", gallery=world.gallery))
    shared = await answer(world, await fake.click(world.bob, art, art.button("Share")))
    assert "Shared to" in shared.text()
    again = await answer(world, await fake.click(world.bob, art, art.button("Share")))
    assert again.ephemeral and "in the gallery already" in again.text()
    [copy] = fake.channel_messages(world.gallery)

    # A stranger pressing the buttons from another server gets nothing.
    jobs_before = len(await query(world.db, "SELECT id FROM jobs"))
    elsewhere = await fake.post(world.carol, fake.channel(world.dogs, "general"), "look what I found",
                                components=art.payload["components"])
    for label in ("Reroll", "Delete", "Report", "V1"):
        stranger = await answer(world, await fake.click(world.carol, elsewhere, art.button(label)))
        assert stranger.ephemeral and "deleted" in stranger.text()
    assert len(await query(world.db, "SELECT id FROM jobs")) == jobs_before and not fake.messages[art.id].deleted

    refused = await answer(world, await fake.click(world.bob, art, art.button("Delete")))
    assert refused.ephemeral and "Only the member who asked" in refused.text()
    removed = await answer(world, await fake.click(world.mod, art, art.button("Delete")))
    assert "gallery copy too" in removed.text()
    assert fake.messages[art.id].deleted and fake.messages[copy.id].deleted

    lines = await lines_since(world, since, 12)
    assert [(line["command"], line["verdict"]) for line in lines if line["guild_id"] == world.cats.id] == [
        ("imagine report", "reported (no moderators' channel)"), ("settings mod-channel", "done"),
        ("imagine report", "reported to the moderators"),
        ("settings change", "done"), ("imagine share", "done"), ("imagine share", "refused"),
        ("imagine delete", "refused"), ("imagine delete", "done"),
    ]
    assert [line["verdict"] for line in lines if line["guild_id"] == world.dogs.id] == ["refused"] * 4
    assert lines[0]["prompt"] == "a cat in a top hat" and lines[0]["generation_id"] is not None


async def test_a_denied_member_gets_nothing_until_allowed(world: World) -> None:
    fake = world.fake
    art = await painted(world, await imagine(world, world.bob, "a cat reading"))
    cannot = await answer(world, await fake.slash(world.cats, world.mod, "settings deny", member=world.alice))
    assert cannot.ephemeral and "has Manage Server" in cannot.text()  # the owner: administrator
    denied = await answer(world, await fake.slash(world.cats, world.mod, "settings deny", member=world.bob))
    assert f"<@{world.bob.id}> can no longer use Pawtrait" in denied.text()
    since = await last_line_id(world)
    jobs_before = len(await query(world.db, "SELECT id FROM jobs"))
    for attempt in (
        lambda: fake.slash(world.cats, world.bob, "imagine", prompt="a cat", steps=1),
        lambda: fake.slash(world.cats, world.bob, "pets"),
        lambda: fake.click(world.bob, art, art.button("Reroll")),
        lambda: fake.click(world.bob, art, art.button("V1")),
    ):
        reply = await answer(world, await attempt())
        assert reply.ephemeral and "stopped you from using Pawtrait here" in reply.text()
    assert len(await query(world.db, "SELECT id FROM jobs")) == jobs_before
    lines = await lines_since(world, since, 4)
    assert [line["verdict"] for line in lines] == ["denied"] * 4
    assert [line["command"] for line in lines] == ["imagine", "pets", "imagine reroll", "imagine variation"]

    allowed = await answer(world, await fake.slash(world.cats, world.mod, "settings allow", member=world.bob))
    assert "can use Pawtrait in this server again" in allowed.text()
    assert "job #" in (await imagine(world, world.bob, "a cat again")).text()
    again = await answer(world, await fake.slash(world.cats, world.mod, "settings allow", member=world.bob))
    assert again.ephemeral and "was not denied" in again.text()


async def test_a_button_that_fails_unexpectedly_answers_and_leaves_a_line(world: World) -> None:
    fake = world.fake
    art = await painted(world, await imagine(world, world.alice, "a cat on a boat"))
    gone = fake.add_channel(world.cats, "old-gallery")
    await fake.dispatch("CHANNEL_CREATE", gone.payload())
    await answer(world, await fake.slash(world.cats, world.mod, "settings change", gallery=gone))
    del fake.channels[gone.id], world.cats.channels[gone.id]  # deleted in Discord; the bot was not told
    since = await last_line_id(world)
    failed = await answer(world, await fake.click(world.alice, art, art.button("Share")))
    assert failed.ephemeral and "Something went wrong on my side" in failed.text()  # not Discord's "interaction failed"
    [line] = await lines_since(world, since, 1)
    assert (line["command"], line["verdict"]) == ("imagine share", "failed")
    assert "a cat on a boat" == line["prompt"]
    await answer(world, await fake.slash(world.cats, world.mod, "settings change", gallery=world.gallery))


async def test_a_share_is_screened_for_the_gallery_it_goes_to(world: World) -> None:
    """Before, 📌 posted pictures whose prompt is allowed only in age-restricted channels to an
    ordinary gallery, prompt and all, and pictures whose prompt uses words the moderators blocked
    after they were painted."""
    fake = world.fake
    explicit = await painted(world, await imagine(world, world.alice, "a N.U.D.E cat in the dark", world.after_dark))
    refused = await answer(world, await fake.click(world.bob, explicit, explicit.button("Share")))
    assert refused.ephemeral and "allowed only in age-restricted channels" in refused.text(), refused.text()
    lamp = await painted(world, await imagine(world, world.alice, "a cat with a lava lamp"))
    await answer(world, await fake.slash(world.cats, world.mod, "settings block-words add", word="lava lamp"))
    refused = await answer(world, await fake.click(world.alice, lamp, lamp.button("Share")))
    assert refused.ephemeral and "blocked" in refused.text(), refused.text()
    assert not [m for m in fake.channel_messages(world.gallery) if "N.U.D.E" in m.content or "lava lamp" in m.content]

    await answer(world, await fake.slash(world.cats, world.mod, "settings change", gallery=world.after_dark))
    shared = await answer(world, await fake.click(world.bob, explicit, explicit.button("Share")))
    assert "Shared to" in shared.text(), shared.text()
    assert [m for m in fake.channel_messages(world.after_dark) if m.content.startswith("📌 **a N.U.D.E cat in the dark**")]


async def test_a_member_denied_while_the_teach_form_is_open_cannot_send_it(world: World) -> None:
    """Before, the "Teach Pawtrait" form skipped the deny check: a member who opened it, then was
    denied, could still send it, and the bot kept their photos as a new pet."""
    fake = world.fake
    post = await fake.post(world.bob, world.general, "my cat", [(f"rex-{i}.jpg", jpeg(i)) for i in range(60, 63)])
    menu = await fake.context_menu(world.cats, world.bob, "Teach Pawtrait", post)
    await fake.wait_until(lambda: menu.modal is not None, 10, "the form")
    await answer(world, await fake.slash(world.cats, world.mod, "settings deny", member=world.bob))
    since = await last_line_id(world)
    submit = await fake.submit_modal(menu, world.bob, {"name": "Rex", "what": "cat"})
    reply = await answer(world, submit)
    assert reply.ephemeral and "stopped you from using Pawtrait here" in reply.text(), reply.text()
    assert not await query(world.db, "SELECT id FROM pets WHERE name = 'Rex'")
    [line] = await lines_since(world, since, 1)
    assert (line["command"], line["verdict"]) == ("teach form", "denied")
    await answer(world, await fake.slash(world.cats, world.mod, "settings allow", member=world.bob))


async def test_a_prompt_is_named_only_in_the_channel_it_was_asked_in(world: World) -> None:
    """/queue and /cancel name a job by its prompt. Before, bob asked for "a N.U.D.E cat" in
    #after-dark, where screening allows it, then cancelled it from #general, and the bot posted
    "⏹️ Job 7 (`a N.U.D.E cat`) cancelled." there for everyone to read; /queue in #general listed
    it too, as it listed the prompts of channels the reader cannot even see."""
    fake = world.fake
    record = await fake.slash(world.cats, world.bob, "imagine", channel=world.after_dark, prompt="a N.U.D.E cat",
                              count=4, steps=100)  # seconds of painting: it is still running below
    asked = await answer(world, record)
    job = int(re.search(r"job #(\d+)", asked.history[0]["content"])[1])
    here = await answer(world, await fake.slash(world.cats, world.alice, "queue"))
    assert f"`job {job}` 🎨 generation asked in another channel" in here.text() and "N.U.D.E" not in here.text(), \
        here.text()
    there = await answer(world, await fake.slash(world.cats, world.bob, "queue", channel=world.after_dark))
    assert f"`job {job}` 🎨 `a N.U.D.E cat`" in there.text(), there.text()  # where it was asked: named as before
    cancelled = await answer(world, await fake.slash(world.cats, world.bob, "cancel", job=job))
    assert not cancelled.ephemeral and f"Job {job} (🎨 generation asked in another channel)" in cancelled.text(), \
        cancelled.text()
