"""A flood of big photos through the real bot: peak memory of the bot and how fast it still answers.

    python benchmarks/teach_flood.py [--teaches 8] [--photos 10] [--png] [--out flood.json]

Runs `pawtrait bot` (embedded: SQLite and a data folder, no worker) against the tests' fake
Discord (tests/fake_discord), which serves attachments from loopback. `--teaches` members each
send `/teach` with `--photos` JPEGs of 9,728 x 6,480 (63 megapixels, noise over shapes, quality
95: about 24 MB each, just under Discord's 25 MB), all at once. With `--png` the photos are
PNGs of 8,000 x 8,000 with transparency that weigh a few hundred KB (tests/photo_samples.py):
what costs a bot memory rather than bandwidth. Meanwhile another member sends `/queue` and
`/pets` in turn, each as soon as the last was answered.

Reported: the bot process's peak resident memory (VmHWM of /proc/PID/status), the slowest and
median answer to the other commands while the flood ran, and the time until every /teach was
answered. The photos are made once with Pillow and cached in a temporary folder. The bot is
stopped if its memory passes --max-rss-gib (the code before the limits could take the machine's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import harness  # noqa: E402

from config.settings import Settings  # noqa: E402

from bot_harness import BotProcess  # noqa: E402
from conftest import settings_env  # noqa: E402
from fake_discord import FakeDiscord  # noqa: E402
from photo_samples import many_pixels_png  # noqa: E402

SIZE = (9728, 6480)
CACHE = Path(tempfile.gettempdir()) / "pawtrait-teach-flood"
ADDED = re.compile(r"(\d+) photos? added|Nothing was added()")


def big_jpeg(seed: int) -> Path:
    """A 63-megapixel JPEG of about 24 MB (cached): coloured shapes under grain, as a noisy phone shot."""
    path = CACHE / f"flood-{seed}.jpg"
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    small = Image.new("RGB", (SIZE[0] // 8, SIZE[1] // 8), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(small)
    for _ in range(40):
        x, y = int(rng.integers(0, small.width)), int(rng.integers(0, small.height))
        w, h = int(rng.integers(50, 600)), int(rng.integers(50, 400))
        draw.ellipse((x, y, x + w, y + h), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    pixels = np.asarray(small.resize(SIZE, Image.Resampling.BILINEAR), dtype=np.int16)
    pixels += rng.integers(-11, 12, size=pixels.shape, dtype=np.int16)  # grain: what makes it 24 MB
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(partial, format="JPEG", quality=95)
    partial.replace(path)
    return path


@dataclass
class Flood:
    """The fake Discord, its members and the bot process the phases drive."""

    args: argparse.Namespace
    fake: FakeDiscord
    guild: object
    members: list
    watcher: object
    bot: BotProcess
    pid: int
    answers: list[float] = field(default_factory=list)  # seconds to each other command's answer
    peak_kib: int = 0  # the bot's peak resident memory once the flood was answered (or stopped)
    stopped: str = ""


async def phase_start(args: argparse.Namespace, folder: Path) -> Flood:
    """The fake Discord with the members, and `pawtrait bot` (embedded, no worker) connected to it."""
    fake = FakeDiscord()
    await fake.start()
    guild = fake.add_guild("Flood Club", owner="owner")
    members = [fake.add_member(guild, f"member{index}") for index in range(args.teaches)]
    watcher = fake.add_member(guild, "watcher")
    settings = Settings(data_dir=folder / "data", model="unused", vae=None, device="cpu", resolution=1024)
    env = dict(settings_env(settings), **fake.bot_env(), PAWTRAIT_WORKERS="0", PAWTRAIT_MAX_PETS_PER_USER="5")
    env.pop("PAWTRAIT_DEV_GUILD", None)
    bot = BotProcess(env, folder / "bot.log")
    await bot.start(fake)
    assert bot.process is not None
    return Flood(args, fake, guild, members, watcher, bot, bot.process.pid)


async def phase_flood(flood: Flood, photos: list[tuple[str, bytes]]) -> list[tuple[float, int]]:
    """Every member's /teach at once while the watcher asks /queue and /pets in turn: when each /teach
    was answered and how many photos it added (none if the bot's memory passed the limit)."""
    args, fake, guild = flood.args, flood.fake, flood.guild
    start = time.perf_counter()
    records = [
        await fake.slash(guild, member, "teach", name=f"Pet{index}", **{"class": "cat"},
                         **{f"photo{n + 1}": photo for n, photo in enumerate(photos)})
        for index, member in enumerate(flood.members)
    ]

    async def teach_done(record) -> tuple[float, int]:
        reply = await fake.reply(record, timeout=args.timeout, check=lambda m: ADDED.search(m.text()))
        return time.perf_counter() - start, int(ADDED.search(reply.text()).group(1) or 0)

    teaches = asyncio.gather(*(teach_done(record) for record in records))
    command = 0
    while not teaches.done():
        if harness.status_kib(flood.pid, "VmRSS") > args.max_rss_gib * 1024 * 1024:
            flood.stopped = f"stopped: resident memory passed {args.max_rss_gib} GiB"
            break
        asked = time.perf_counter()
        record = await fake.slash(guild, flood.watcher, ("queue", "pets")[command % 2])
        command += 1
        await fake.reply(record, timeout=args.timeout)
        flood.answers.append(time.perf_counter() - asked)
        await asyncio.sleep(0.2)
    flood.peak_kib = harness.status_kib(flood.pid, "VmHWM")
    if flood.stopped:
        teaches.cancel()
        await asyncio.gather(teaches, return_exceptions=True)
        return []
    return await teaches


def flood_photos(args: argparse.Namespace) -> list[tuple[str, bytes]]:
    """What each member sends: the big JPEGs, or with --png the small files of many pixels."""
    if args.png:
        return [(f"cutout_{seed:04d}.png", many_pixels_png(seed, "RGBA")) for seed in range(args.photos)]
    return [(f"IMG_{seed:04d}.jpg", big_jpeg(seed).read_bytes()) for seed in range(args.photos)]


async def run(args: argparse.Namespace) -> dict:
    photos = flood_photos(args)
    sizes = [len(data) for _, data in photos]
    folder = Path(tempfile.mkdtemp(prefix="teach-flood-"))
    flood = await phase_start(args, folder)
    idle_kib = harness.status_kib(flood.pid, "VmRSS")
    try:
        finished = await phase_flood(flood, photos)
    finally:
        if flood.stopped:
            flood.bot.process.kill()
        await flood.bot.stop()
        await flood.fake.stop()
        subprocess.run(["rm", "-rf", str(folder)], check=False)
    answers = flood.answers
    return {
        "commit": harness.commit(),
        "cpus": os.cpu_count(),
        "teaches": args.teaches,
        "photos_per_teach": args.photos,
        "photo_mb": round(statistics.mean(sizes) / 1e6, 2),
        "photo_pixels": "8000x8000 RGBA PNG" if args.png else f"{SIZE[0]}x{SIZE[1]}",
        "bot_idle_rss_mib": round(idle_kib / 1024),
        "bot_peak_rss_mib": round(flood.peak_kib / 1024),
        "other_commands": len(answers),
        "other_commands_slowest_s": round(max(answers), 2) if answers else None,
        "other_commands_median_s": round(statistics.median(answers), 2) if answers else None,
        "all_teaches_answered_s": round(max(at for at, _ in finished), 1) if finished else None,
        "photos_added_per_teach": sorted({added for _, added in finished}),
        "stopped": flood.stopped,
    }


def main() -> None:
    parser = harness.parser(__doc__, out=None)
    parser.add_argument("--teaches", type=int, default=8)
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for any one answer")
    parser.add_argument("--max-rss-gib", type=float, default=6.0)
    parser.add_argument("--png", action="store_true", help="small PNGs of 64 megapixels instead of 24 MB JPEGs")
    args = parser.parse_args()
    results = harness.Results(args.out, **asyncio.run(run(args)))
    print(json.dumps(results, indent=2))
    results.save()


if __name__ == "__main__":
    main()
