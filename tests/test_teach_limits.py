"""Bounded photo intake through the real bot process and the fake Discord: a member's next
/teach (or "Teach Pawtrait") within the cooldown is refused in plain words, others are not."""

from __future__ import annotations

import re
from pathlib import Path

from config.settings import Settings

from bot_harness import bot_process
from fake_discord import FakeDiscord
from photo_samples import jpeg


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
