"""One picture of every prepared crop, so the owner sees at a glance what will be learnt."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

THUMBNAIL = 256
GAP = 8
MAX_COLUMNS = 5


def contact_sheet(crops: Sequence[Path]) -> Image.Image:
    """A white grid of numbered thumbnails, in the order given (the order photos were added)."""
    columns = min(MAX_COLUMNS, max(1, len(crops)))
    rows = max(1, math.ceil(len(crops) / columns))
    sheet = Image.new("RGB", (GAP + columns * (THUMBNAIL + GAP), GAP + rows * (THUMBNAIL + GAP)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, path in enumerate(crops):
        with Image.open(path) as crop:
            thumb = crop.convert("RGB").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS, reducing_gap=2.0)
        x = GAP + (index % columns) * (THUMBNAIL + GAP)
        y = GAP + (index // columns) * (THUMBNAIL + GAP)
        sheet.paste(thumb, (x, y))
        label = str(index + 1)
        left, top, right, bottom = draw.textbbox((x + 6, y + 4), label)
        draw.rectangle((left - 3, top - 2, right + 3, bottom + 2), fill="black")
        draw.text((x + 6, y + 4), label, fill="white")
    return sheet


def contact_sheet_png(crops: Sequence[Path]) -> bytes:
    """The sheet as PNG bytes, ready for the file store."""
    buffer = io.BytesIO()
    contact_sheet(crops).save(buffer, format="PNG")
    return buffer.getvalue()
