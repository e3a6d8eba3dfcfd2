"""Real image files made with Pillow for the intake tests: every accepted format and every bad input.

Photos are gradients with random shapes drawn from a seed, so different seeds look
different to the perceptual hash and the same seed gives the same pixels.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw

import engine.usecases.intake.decode  # noqa: F401  (registers the HEIF opener/saver)


def varied_photo(seed: int, size: tuple[int, int] = (640, 560)) -> Image.Image:
    rng = np.random.default_rng(seed)
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = (xs * rng.uniform(0.2, 0.6) + rng.integers(0, 255)) % 256
    pixels[..., 1] = (ys * rng.uniform(0.2, 0.6) + rng.integers(0, 255)) % 256
    pixels[..., 2] = ((xs + ys) * rng.uniform(0.1, 0.3)) % 256
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 10, width // 2)), int(rng.integers(height // 10, height // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        else:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
    return image


def encode(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def jpeg(seed: int, size: tuple[int, int] = (640, 560), quality: int = 92) -> bytes:
    return encode(varied_photo(seed, size), "JPEG", quality=quality)


def exif_rotated_jpeg() -> bytes:
    """A portrait photo (red top half, blue bottom) stored sideways with EXIF orientation 6, as phones do."""
    upright = Image.new("RGB", (600, 800), (220, 30, 30))
    upright.paste((30, 30, 220), (0, 400, 600, 800))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 800x600 on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    return encode(stored, "JPEG", quality=95, exif=exif)


def cmyk_jpeg(seed: int) -> bytes:
    return encode(varied_photo(seed).convert("CMYK"), "JPEG", quality=95)


def png16(seed: int) -> bytes:
    """16-bit greyscale PNG: a mid-grey (32768) field with a brighter band."""
    pixels = np.full((560, 640), 32768, np.uint16)
    rng = np.random.default_rng(seed)
    top = int(rng.integers(0, 400))
    pixels[top : top + 100, :] = 60000
    return encode(Image.fromarray(pixels), "PNG")


def rgba_png(seed: int) -> bytes:
    """A photo whose left third is fully transparent."""
    image = varied_photo(seed).convert("RGBA")
    alpha = Image.new("L", image.size, 255)
    alpha.paste(0, (0, 0, image.width // 3, image.height))
    image.putalpha(alpha)
    return encode(image, "PNG")


def palette_png(seed: int) -> bytes:
    return encode(varied_photo(seed).convert("P", palette=Image.Palette.ADAPTIVE), "PNG")


def webp(seed: int, lossless: bool = False) -> bytes:
    return encode(varied_photo(seed), "WEBP", lossless=lossless, quality=90)


def heic(seed: int) -> bytes:
    return encode(varied_photo(seed), "HEIF", quality=90)


def mpo(seed: int) -> bytes:
    return encode(varied_photo(seed), "MPO", save_all=True, append_images=[varied_photo(seed + 1000)])


def truncated_jpeg(seed: int) -> bytes:
    data = jpeg(seed)
    return data[: len(data) // 2]


def text_file() -> bytes:
    return b"Shopping list:\n- cat food\n- litter\n" * 20


def pdf(seed: int) -> bytes:
    return encode(varied_photo(seed), "PDF")


def video() -> bytes:
    """The start of an MP4 file: an ftyp box then media data."""
    ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isomiso2"
    return ftyp + struct.pack(">I", 1024) + b"mdat" + bytes(1016)


def many_pixels_png(seed: int, mode: str, side: int = 8000) -> bytes:
    """A PNG of side x side pixels (8000: the 64 megapixels intake accepts) in `mode` ("RGBA", or "P"
    with a transparent colour) that weighs a few hundred KB at most: flat shapes compress to almost
    nothing, while a decoder still holds every pixel."""
    rng = np.random.default_rng(seed)
    image = Image.new(mode, (side, side), 0)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = (int(v) for v in rng.integers(0, side // 2, 2))
        colour = int(rng.integers(1, 256)) if mode == "P" else tuple(int(v) for v in rng.integers(0, 256, 4))
        draw.ellipse((x, y, x + side // 3, y + side // 3), fill=colour)
    options = {"transparency": 0} if mode == "P" else {}
    return encode(image, "PNG", **options)


def decompression_bomb() -> bytes:
    """A tiny PNG whose header claims 100000 x 100000 pixels (10 gigapixels)."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    # IHDR: 8-byte signature, 4-byte length, b'IHDR', then width and height, then a CRC.
    struct.pack_into(">II", data, 16, 100_000, 100_000)
    crc = zlib.crc32(bytes(data[12:29]))
    struct.pack_into(">I", data, 29, crc)
    return bytes(data)


def oversized_file(seed: int) -> bytes:
    """A valid JPEG padded past 25 MB."""
    return jpeg(seed) + bytes(26 * 1024 * 1024)
