"""Bounded photo intake through the real bot process and the fake Discord: a member's next
/teach (or "Teach Pawtrait") within the cooldown is refused in plain words, others are not; a
photo of many pixels in a small file costs the bot little memory."""

from __future__ import annotations

import re
from pathlib import Path

from config.settings import Settings

from bot_harness import bot_process
from fake_discord import FakeDiscord
from photo_samples import jpeg, many_pixels_png


async def test_a_second_teach_within_the_cooldown_is_refused_in_plain_words(tmp_path: Path, tiny_model_dir: Path) -> None:
    fake = FakeDiscord()
    await fake.start()
    cats = fake.add_guild("Cat Club", owner="alice")
    alice, bob = cats.members[cats.owner_id], fake.add_member(cats, "bob")
    general = fake.channel(cats, "general")
    settings = Settings(data_dir=tmp_path / "data", model=str(tiny_model_dir), vae=None, device="cpu", resolution=64)
    bot = bot_process(settings, fake, tmp_path, PAWTRAIT_WORKERS="0", PAWTRAIT_TEACH_COOLDOWN_S="600")
    await bot.start(fake)
    try:
        first = await fake.reply(await fake.slash(cats, alice, "teach", name="Mochi", photo1=("a.jpg", jpeg(1)),
                                                  **{"class": "cat"}))
        assert "New pet **Mochi**" in first.text()

        again = await fake.reply(await fake.slash(cats, alice, "teach", name="Mochi", photo1=("b.jpg", jpeg(2)),
                                                  **{"class": "cat"}))
        assert again.ephemeral
        wait = re.fullmatch(r"You just sent photos to teach; send the next ones in (\d+) seconds\.", again.text())
        assert wait and 590 <= int(wait.group(1)) <= 600, again.text()
        post = await fake.post(alice, general, "more of Mochi", [("c.jpg", jpeg(3))])
        menu = await fake.reply(await fake.context_menu(cats, alice, "Teach Pawtrait", post))
        assert menu.ephemeral and "send the next ones in" in menu.text()

        other = await fake.reply(await fake.slash(cats, bob, "teach", name="Rex", photo1=("d.jpg", jpeg(4)),
                                                  **{"class": "dog"}))
        assert "New pet **Rex**" in other.text()  # the cooldown is each member's own
    finally:
        await bot.stop()
        await fake.stop()


def _memory_mib(pid: int, field: str) -> float:
    """VmHWM (the peak since the last reset) or VmRSS of a process, in MiB."""
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


async def test_a_small_file_of_many_pixels_costs_the_bot_little_memory(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A member sends PNGs of 64 megapixels that weigh a few hundred KB (a cut-out with
    transparency, a palette image): the bot decodes every pixel, and before, each copy made of
    them after (upright, sRGB, white under the transparency) was as large again; one such photo
    raised the bot's memory by over 1 GB, and two members' batches at once by twice that."""
    fake = FakeDiscord()
    await fake.start()
    cats = fake.add_guild("Cat Club", owner="alice")
    alice = cats.members[cats.owner_id]
    settings = Settings(data_dir=tmp_path / "data", model=str(tiny_model_dir), vae=None, device="cpu", resolution=64)
    bot = bot_process(settings, fake, tmp_path, PAWTRAIT_WORKERS="0")
    photos = {"photo1": ("cutout.png", many_pixels_png(1, "RGBA")), "photo2": ("palette.png", many_pixels_png(2, "P"))}
    assert max(len(data) for _, data in photos.values()) < 512 * 1024
    await bot.start(fake)
    try:
        pid = bot.process.pid  # type: ignore[union-attr]
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak starts again from what the bot holds now
        before = _memory_mib(pid, "VmRSS")
        taught = await fake.reply(await fake.slash(cats, alice, "teach", name="Huge", **{"class": "cat"}, **photos), timeout=120)
        assert "2 photos added" in taught.text(), taught.text()
        grew = _memory_mib(pid, "VmHWM") - before
    finally:
        await bot.stop()
        await fake.stop()
    # The pixels of one photo at 4 bytes each are 244 MiB; shrunk right after decoding, the
    # copies after that are a few MiB (RGBA is averaged premultiplied: one more full copy).
    assert grew < 700, f"the bot's memory rose by {grew:.0f} MiB for two photos"
