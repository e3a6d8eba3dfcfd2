"""Fingerprints of decoded photos, to skip the same photo sent twice.

Two hashes, because users resend photos in two ways: the very same pixels in another
container (a PNG saved again as lossless WebP) match the SHA-256 of the pixels exactly;
a re-compressed or slightly resized copy matches the 64-bit difference hash within a few
bits. Both are computed from the upright RGB image, never from the file bytes. A large photo
is hashed as decoded at reduced size (engine.usecases.intake.decode): the same file always decodes to the
same pixels, so a file sent again is still an exact duplicate, and a copy of it hashed from every
pixel (a photo taught before reduced decoding, or a PNG of it) is a near-duplicate by its dHash.
"""

from __future__ import annotations

import hashlib

from PIL import Image

# Differing bits at or below which two photos count as near-duplicates. A re-encode or a
# resize moves a dHash by 0-3 bits; unrelated photos differ by about 32.
NEAR_DUPLICATE_BITS = 6


def pixel_sha256(image: Image.Image) -> str:
    """Hex SHA-256 of the RGB pixels and their size (so shapes with equal bytes differ)."""
    digest = hashlib.sha256(f"{image.width}x{image.height};".encode())
    digest.update(image.convert("RGB").tobytes())
    return digest.hexdigest()


def difference_hash(image: Image.Image) -> str:
    """64-bit dHash as 16 hex digits: is each cell of a 9x8 grey thumbnail brighter than its right neighbour."""
    small = image.convert("L").resize((9, 8), Image.Resampling.LANCZOS)
    pixels = small.load()
    bits = 0
    for y in range(8):
        for x in range(8):
            bits = (bits << 1) | int(pixels[x, y] > pixels[x + 1, y])
    return f"{bits:016x}"


def hash_distance(first: str, second: str) -> int:
    """Number of differing bits between two hex hashes."""
    return (int(first, 16) ^ int(second, 16)).bit_count()
