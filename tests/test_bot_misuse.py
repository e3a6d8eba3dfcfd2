"""End to end, as a member misusing the bot would: pet names that are mentions (`@everyone`,
a role, another member), thousands of characters in every field the bot echoes, ten
unusable files with long names, a server full of pets on a small upload limit.

The real bot process and its worker (tiny model) against the fake Discord, which refuses
what Discord refuses (over-long messages, oversized uploads) and records every post and
edit with the mentions Discord would notify. Embedded mode only: nothing here depends on
where records and files are kept.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from bot_harness import BotProcess, bot_process, fake_and_installation, running
from fake_discord import FakeDiscord, StoredMessage
from fake_discord.payloads import Channel, Guild, Member
from photo_samples import encode, jpeg, varied_photo

pytestmark = pytest.mark.asyncio(loop_scope="module")

LONG = 3000  # characters a member types into a field the bot echoes


@dataclass
class World:
    fake: FakeDiscord
    bot: BotProcess
    guild: Guild
    bob: Member
    mallory: Member
    dave: Member
    general: Channel
    mods: Channel
    gallery: Channel
    data_dir: Path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    fake, folder, settings = await fake_and_installation(request)
    guild = fake.add_guild("Open Server", owner="owner")
    mods, gallery = fake.add_channel(guild, "mods"), fake.add_channel(guild, "gallery")
    bot = bot_process(settings, fake, folder)
    world = World(fake, bot, guild, fake.add_member(guild, "bob"), fake.add_member(guild, "mallory"),
                  fake.add_member(guild, "dave"), fake.channel(guild, "general"), mods, gallery, settings.data_dir)
    async with running(bot, fake):
        yield world


async def answer(world: World, record, timeout: float = 60) -> StoredMessage:
    return await world.fake.reply(record, timeout=timeout)


@pytest.fixture(autouse=True)
def refusals_of_this_test(world: World) -> None:
    world.fake.refused.clear()  # each test answers for its own messages


def assert_discord_accepted_everything(fake: FakeDiscord) -> None:
    assert not fake.refused, f"Discord would have refused: {fake.refused}"


async def teach(world: World, member: Member, name: str, seeds: range) -> StoredMessage:
    photos = {f"photo{i + 1}": (f"p{seed}.jpg", jpeg(seed)) for i, seed in enumerate(seeds)}
    return await answer(world, await world.fake.slash(world.guild, member, "teach", name=name, **{"class": "cat"}, **photos))


async def test_pet_names_that_are_mentions_never_ping_anyone_but_the_owner(world: World) -> None:
    fake, bob, mallory = world.fake, world.bob, world.mallory
    everyone = "@everyone @here " + "x" * 16  # the longest name a pet may have (32)
    role_and_member = f"<@&123> <@{bob.id}>"  # a role, and another member
    assert len(everyone) == 32 and len(role_and_member) <= 32
    for member, name, seeds in ((bob, everyone, range(1, 4)), (mallory, role_and_member, range(4, 7))):
        taught = await teach(world, member, name, seeds)
        assert "3 photos added" in taught.text(), taught.text()
    # Someone else's pet named a mention: the refusal quotes it.
    refused = await answer(world, await fake.slash(world.guild, mallory, "train", pet=everyone))
    assert refused.ephemeral and "only they" in refused.text()
    for member, name in ((bob, everyone), (mallory, role_and_member)):
        await answer(world, await fake.slash(world.guild, member, "train", pet=name, steps=2))
    trained = await fake.wait_until(
        lambda: (found := [m for m in fake.messages.values() if "is trained!" in m.content])[1:] and found,
        300, "both trainings to finish\n" + world.bot.log_tail(),
    )
    assert {m.content.split(">", 1)[0] for m in trained} == {f"<@{bob.id}", f"<@{mallory.id}"}

    owners = {bob.id, mallory.id}
    for sent in fake.sent:
        pinged = sent.pings
        assert not pinged.everyone and not pinged.roles, f"{sent.route} pinged {pinged}: {sent.content[:200]!r}"
        if "is trained!" in sent.content:
            # Only the pet's owner, though the name mentions bob: mallory's message pings mallory alone.
            assert len(pinged.users) == 1 and pinged.users <= owners and sent.content.startswith(f"<@{next(iter(pinged.users))}>")
        else:
            assert not pinged.users, f"{sent.route} pinged {pinged}: {sent.content[:200]!r}"
    assert_discord_accepted_everything(fake)


async def test_a_worker_process_gets_no_discord_token(world: World) -> None:
    """The bot has DISCORD_TOKEN in its environment; the worker it starts must not."""
    bot_pid = world.bot.process.pid
    workers = [pid for pid in _children(bot_pid) if b"engine.gpu.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert workers, "the bot runs no worker process"
    for pid in workers:
        names = {entry.split(b"=", 1)[0] for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")}
        assert b"DISCORD_TOKEN" not in names and b"PAWTRAIT_DATA_DIR" in names


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


async def test_three_thousand_characters_in_the_prompt_and_negative_are_cut_to_fit(world: World) -> None:
    fake = world.fake
    prompt, negative = "a castle " * (LONG // 9), "@everyone blurry " * (LONG // 17)
    record = await fake.slash(world.guild, world.dave, "imagine", prompt=prompt, negative=negative, steps=1)
    queued = await answer(world, record)
    assert "job #" in queued.text() and "…" in queued.text()
    done = await fake.wait_until(lambda: fake.messages[queued.id].files and fake.messages[queued.id], 180,
                                 "the finished images\n" + world.bot.log_tail())
    assert len(done.content) <= 2000 and "a castle a castle" in done.content and "negative: @everyone blurry" in done.content
    assert done.content.count("…") >= 2  # both cut, with an ellipsis
    assert_discord_accepted_everything(fake)


LINK = "[free nitro](https://evil.example)"
UNESCAPED_LINK = re.compile(r"(?<!\\)\[[^\]\n]*\]\(")


def renders_a_link(text: str) -> bool:
    """Whether Discord would show a masked link in `text` (a code span shows its text as it is)."""
    return bool(UNESCAPED_LINK.search(re.sub(r"`[^`\n]*`", "", text)))


async def test_links_and_backticks_in_member_text_are_shown_as_text(world: World) -> None:
    """A masked link in a prompt, a file name or a pet's name would be posted in the bot's own
    words ("🎨 **[free nitro](https://…)**"), and a backtick would end the code it is quoted in:
    each is shown as the text it is, or refused."""
    fake, dave = world.fake, world.dave
    first = len(fake.sent)
    record = await fake.slash(world.guild, dave, "imagine", prompt=f"a cat {LINK} `{LINK}` on a sofa", steps=1)
    queued = await answer(world, record)
    await fake.wait_until(lambda: fake.messages[queued.id].files, 180, "the finished images\n" + world.bot.log_tail())
    tiny = encode(varied_photo(91, (16, 16)), "PNG")
    listed = await answer(world, await fake.slash(world.guild, dave, "teach", name="Rex", **{"class": "cat"},
                                                    photo1=(f"a`{LINK}`.png", tiny)))
    assert "Nothing was added" in listed.text()  # the file is listed, by its name
    short = "[free nitro](https://e.example)"  # within the 32 characters of a name
    named = await answer(world, await fake.slash(world.guild, dave, "teach", name=short, **{"class": "cat"},
                                                   photo1=("cat.jpg", jpeg(92))))
    assert named.text() == "A pet's name can't contain [ ] or ` (Discord would show links or code); choose another name."
    await answer(world, await fake.slash(world.guild, dave, "train", pet=short))  # "There is no pet called …"

    shown = [sent.content for sent in fake.sent[first:] if "free nitro" in sent.content]
    assert len(shown) >= 4, shown  # queued, painted, the file listed, no such pet
    assert not [text for text in shown if renders_a_link(text)]
    assert_discord_accepted_everything(fake)


async def test_ten_unusable_files_with_long_names_are_each_listed_or_counted(world: World) -> None:
    fake = world.fake
    tiny = encode(varied_photo(90, (16, 16)), "PNG")  # too small to learn from
    huge = bytes(25 * 1024 * 1024 + 1)  # over the 25 MB the bot downloads (one object, shared by nine files)
    long_name = "my cat on the sofa, " * 12  # 240 characters
    photos = {"photo1": (f"{long_name}.png", tiny)}
    photos.update({f"photo{i}": (f"{long_name}{i}.jpg", huge) for i in range(2, 11)})
    record = await fake.slash(world.guild, world.dave, "teach", name="Nothing", **{"class": "cat"}, **photos)
    text = (await answer(world, record)).text()
    assert text.startswith("❌ Nothing was added") and len(text) <= 2000
    listed = text.count("too small") + text.count("larger than 25 MB")
    more = int(counted[1]) if (counted := re.search(r"…and (\d+) more", text)) else 0
    assert listed + more == 10 and listed >= 5, text
    assert_discord_accepted_everything(fake)


async def test_a_server_full_of_pets_is_listed_within_the_upload_limit(world: World) -> None:
    fake = world.fake
    seeds = iter(range(100, 200))
    for member, count in ((world.bob, 4), (world.mallory, 4), (world.dave, 3)):  # 13 pets with the two trained ones
        for index in range(count):
            seed = next(seeds)
            await teach(world, member, f"{member.user.name} pet {index}", range(seed, seed + 1))
    limit = 24 * 1024  # a server whose upload limit holds a few thumbnails only
    fake.attachment_size_limit = limit
    try:
        listing = await answer(world, await fake.slash(world.guild, world.dave, "pets"))
    finally:
        fake.attachment_size_limit = 25 * 1024 * 1024
    assert len(listing.embeds) == 10 and "…and 3 more." in listing.content
    assert listing.files and sum(len(data) for data in listing.files.values()) <= limit
    assert_discord_accepted_everything(fake)


async def test_pictures_and_the_chart_fit_a_small_upload_limit(world: World) -> None:
    """A server whose limit is below one picture of the tiny model (64 px PNGs of about 12 KB):
    before, the relay's posts and edits were refused (413) and the member saw no picture; the
    contact sheet of /teach and the gallery's copy of a share were refused too."""
    fake, dave = world.fake, world.dave
    limit = 8 * 1024
    fake.attachment_size_limit = limit  # what Discord tells each interaction, and what it refuses beyond
    try:
        taught = await teach(world, dave, "Pixel", range(300, 303))  # its contact sheet is larger still
        assert "3 photos added" in taught.text() and taught.files, taught.text()
        await answer(world, await fake.slash(world.guild, dave, "train", pet="Pixel", steps=2))
        await fake.wait_until(  # the finish message, or a refusal (then no message comes)
            lambda: fake.refused or any("**Pixel** is trained!" in m.content for m in fake.messages.values()),
            300, "the training to finish\n" + world.bot.log_tail(),
        )
        assert_discord_accepted_everything(fake)
        queued = await answer(world, await fake.slash(world.guild, dave, "imagine", prompt="a red barn", count=4, steps=2))
        await fake.wait_until(lambda: fake.refused or "seeds" in fake.messages[queued.id].content,
                              180, "the four pictures\n" + world.bot.log_tail())
        owner = world.guild.members[world.guild.owner_id]
        await answer(world, await fake.slash(world.guild, owner, "settings change", gallery=world.general))
        painted = fake.messages[queued.id]
        shared = await fake.reply(await fake.click(dave, painted, painted.button("Share")))
        assert "Shared to" in shared.text(), shared.text()
    finally:
        fake.attachment_size_limit = 25 * 1024 * 1024
    assert_discord_accepted_everything(fake)
    [copy] = [m for m in fake.channel_messages(world.general) if m.content.startswith("📌")]
    assert len(copy.files) == 4 and sum(len(data) for data in copy.files.values()) <= limit
    trained = next(m for m in fake.messages.values() if "**Pixel** is trained!" in m.content)
    painted = fake.messages[queued.id]
    thread = next(t for t in fake.threads(world.guild) if "Pixel" in t.name)
    validation = [m for m in fake.channel_messages(thread) if m.content.startswith("🖼️")]
    assert {"before training", "step 2"} <= {m.content.split("**")[1] for m in validation}
    assert all(len(m.files) == 1 for m in validation), "a validation image is missing"
    assert len(painted.files) == 4 and "did not fit" not in painted.content
    assert trained.files, "the chart of scores is missing"


async def test_pictures_that_cannot_fit_are_left_out_with_a_line_saying_so(world: World) -> None:
    fake = world.fake
    fake.attachment_size_limit = 1024  # not even one of four 64 px pictures at the lowest quality and size
    try:
        queued = await answer(world, await fake.slash(world.guild, world.dave, "imagine", prompt="a barn", count=4, steps=1))
        await fake.wait_until(lambda: fake.refused or "seeds" in fake.messages[queued.id].content,
                              180, "the pictures\n" + world.bot.log_tail())
    finally:
        fake.attachment_size_limit = 25 * 1024 * 1024
    assert_discord_accepted_everything(fake)
    painted = fake.messages[queued.id]
    left_out = re.search(r"⚠️ (\d) pictures? did not fit this server's upload limit, even made smaller; (it is|they are) kept",
                         painted.content)
    assert left_out and len(painted.files) + int(left_out[1]) == 4, painted.content


async def test_a_training_that_fails_on_the_server_shows_no_path_or_error_text(world: World) -> None:
    """A training that fails for a reason on the server's side (here the folder of its class
    images cannot be made: a file is in its place, as a full disk or a broken mount would fail it)
    says so in plain words; before, the thread and the owner's ping quoted the exception,
    with the data folder's path ("[Errno 17] File exists: '/srv/…/class-images/zebra'")."""
    fake = world.fake
    erin = fake.add_member(world.guild, "erin")
    photos = {f"photo{i + 1}": (f"p{seed}.jpg", jpeg(seed)) for i, seed in enumerate(range(400, 403))}
    taught = await answer(world, await fake.slash(world.guild, erin, "teach", name="Stripes", **{"class": "zebra"}, **photos))
    assert "3 photos added" in taught.text(), taught.text()
    (world.data_dir / "class-images").mkdir(parents=True, exist_ok=True)
    (world.data_dir / "class-images" / "zebra").write_bytes(b"not a folder")
    queued = await answer(world, await fake.slash(world.guild, erin, "train", pet="Stripes", steps=2,
                                                  prior_preservation=True))
    assert "job #" in queued.text(), queued.text()
    [told] = await fake.wait_until(
        lambda: [m for m in fake.messages.values() if m.content.startswith(f"<@{erin.id}> the training failed")],
        300, "the training to fail\n" + world.bot.log_tail(),
    )
    assert "a problem on the server" in told.content, told.content
    for sent in fake.sent:
        assert str(world.data_dir) not in sent.content and "Errno" not in sent.content, sent.content
    assert_discord_accepted_everything(fake)


async def test_pressing_report_or_share_again_and_again_posts_once(world: World) -> None:
    """A member who presses 🚩 ten times, or 📌 five times without waiting for an answer, posts
    one report to the moderators and one gallery copy; the other presses are told it was done.
    Before, every 🚩 posted the report again (the moderators' channel flooded with one picture),
    and presses of 📌 that came together each posted a gallery copy."""
    fake, mallory = world.fake, world.mallory
    owner = world.guild.members[world.guild.owner_id]
    await answer(world, await fake.slash(world.guild, owner, "settings mod-channel", options={"channel": world.mods}))
    await answer(world, await fake.slash(world.guild, owner, "settings change", gallery=world.gallery))
    queued = await answer(world, await fake.slash(world.guild, world.dave, "imagine", prompt="a kite on a beach", steps=1))
    painted = await fake.wait_until(lambda: fake.messages[queued.id].files and fake.messages[queued.id], 180,
                                    "the finished picture\n" + world.bot.log_tail())
    reports = [await fake.click(mallory, painted, painted.button("Report")) for _ in range(10)]
    shares = [await fake.click(mallory, painted, painted.button("Share")) for _ in range(5)]
    told = [(await fake.reply(record)).text() for record in reports + shares]
    reported_again = await answer(world, await fake.click(mallory, painted, painted.button("Report")))

    assert len(fake.channel_messages(world.mods)) == 1, [m.content for m in fake.channel_messages(world.mods)]
    assert len(fake.channel_messages(world.gallery)) == 1, [m.content for m in fake.channel_messages(world.gallery)]
    assert sum("moderators were told" in text for text in told[:10]) == 1, told[:10]
    assert sum("Shared to" in text for text in told[10:]) == 1, told[10:]
    assert reported_again.ephemeral and "already reported" in reported_again.text(), reported_again.text()
    dave_reports = await answer(world, await fake.click(world.dave, painted, painted.button("Report")))
    assert "moderators were told" in dave_reports.text()  # another member's report is told too
    assert len(fake.channel_messages(world.mods)) == 2
    assert_discord_accepted_everything(fake)


async def test_a_line_break_in_a_prompt_cannot_start_a_line_of_the_bots_own(world: World) -> None:
    """Discord's apps turn a line break in an option into a space, but an interaction that carries one
    reached the bot's messages as it was: the prompt's second line ("✅ Approved by the moderators",
    a made-up audit line) stood on its own line of the bot's message, the moderators' report and
    /audit. Member text is shown on one line."""
    fake, mallory = world.fake, world.mallory
    owner = world.guild.members[world.guild.owner_id]
    fake_line = "🧾 `#1` **settings allow** · done"
    prompt = f"a cat\n✅ Approved by the moderators\r\n{fake_line}\u2028## big"
    first = len(fake.sent)
    queued = await answer(world, await fake.slash(world.guild, mallory, "imagine", prompt=prompt, steps=1))
    painted = await fake.wait_until(lambda: fake.messages[queued.id].files and fake.messages[queued.id], 180,
                                    "the finished picture\n" + world.bot.log_tail())
    await answer(world, await fake.slash(world.guild, owner, "settings mod-channel", options={"channel": world.mods}))
    reported = await answer(world, await fake.click(world.bob, painted, painted.button("Report")))
    assert "moderators were told" in reported.text(), reported.text()
    audit = await answer(world, await fake.slash(world.guild, owner, "audit", member=mallory))

    shown = [sent.content for sent in fake.sent[first:] if "Approved by" in sent.content] + [audit.content]
    assert len(shown) >= 4, shown  # queued, painted, reported, the audit log
    for text in shown:
        for line in re.split(r"\r\n|[\n\r\u2028\u2029]", text)[1:]:
            assert line.startswith(("🧾 `#", "`#", "seed", "🔀", "⚠️", "🚫")), f"{line!r} in {text!r}"
    assert_discord_accepted_everything(fake)
