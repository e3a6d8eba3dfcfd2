"""Making a message's attachments fit a server's upload limit.

Discord refuses a message whose files pass the server's limit (10 MiB without boosts; 413, code
40005) and the member sees nothing, while four 1024 px PNGs can weigh 6 MiB or more. Pictures
over their share are sent as JPEGs, smaller in quality and then in size, until they fit; what
still cannot fit is left out and counted so the message can say so. Only the upload changes:
the stored files stay as they were.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import PurePath

from PIL import Image, UnidentifiedImageError

QUALITIES = (85, 70, 50, 35)  # JPEG qualities tried at each size, best first
SHRINK = 0.7  # each smaller size is this much of the one before on each side
MIN_SIDE = 32  # px: a picture shrunk below this on its longer side is not worth showing


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


def fit(uploads: list[Upload], limit: int) -> tuple[list[Upload], int]:
    """`uploads` (in their order) together within `limit` bytes, and how many were left out.

    The smallest go first so that room they do not use passes to the larger ones."""
    if sum(len(upload.data) for upload in uploads) <= limit:
        return uploads, 0
    fitted: dict[int, Upload] = {}
    room = limit
    order = sorted(range(len(uploads)), key=lambda i: len(uploads[i].data))
    for place, index in enumerate(order):
        share = room // (len(order) - place)
        upload = uploads[index]
        smaller = upload if len(upload.data) <= share else shrunk(upload, share)
        if smaller is not None:
            fitted[index] = smaller
            room -= len(smaller.data)
    return [fitted[i] for i in sorted(fitted)], len(uploads) - len(fitted)


def shrunk(upload: Upload, limit: int) -> Upload | None:
    """The picture as a JPEG of at most `limit` bytes, or None (not a picture, or too large
    even at the lowest quality and size)."""
    try:
        with Image.open(io.BytesIO(upload.data)) as opened:
            picture = _opaque(opened)
    except (UnidentifiedImageError, OSError):
        return None
    filename = str(PurePath(upload.filename).with_suffix(".jpg"))
    while max(picture.size) >= MIN_SIDE:
        for quality in QUALITIES:
            out = io.BytesIO()
            picture.save(out, format="JPEG", quality=quality, optimize=True)
            if out.tell() <= limit:
                return Upload(filename, out.getvalue())
        width, height = picture.size
        picture = picture.resize((max(1, round(width * SHRINK)), max(1, round(height * SHRINK))), Image.Resampling.LANCZOS)
    return None


def _opaque(image: Image.Image) -> Image.Image:
    """RGB for JPEG; transparent parts (a chart's background) become white rather than black."""
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        white = Image.new("RGB", rgba.size, "white")
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return image.convert("RGB")
