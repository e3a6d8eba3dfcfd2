"""Small thumbnails of pets' photos for `/pets`: ten prepared photos at full size (1024 px
PNGs, a megabyte or more each) would pass the upload limit of a server without boosts."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

THUMBNAIL_PX = 160  # Discord shows an embed thumbnail at 80 px; twice that stays sharp on high-DPI screens


def thumbnail_png(path: Path) -> bytes:
    """A PNG of the photo at most THUMBNAIL_PX on its longer side (tens of kilobytes)."""
    with Image.open(path) as image:
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        out = io.BytesIO()
        image.convert("RGB").save(out, format="PNG", optimize=True)
    return out.getvalue()
