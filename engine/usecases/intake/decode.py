"""Decode one uploaded file into an upright sRGB image, or say in plain words why not.

Uploads are untrusted bytes: the file size and the declared pixel count are checked
before any pixel is decoded (so a decompression bomb or a video never allocates
gigabytes), only the formats phones actually produce are opened, and the whole image is
decoded (`load()`) before it is accepted, so a truncated file is caught here and not half
way through a training run.

A JPEG far larger than the crop needs is decoded at 1/2, 1/4 or 1/8 of its size by the JPEG
decoder itself (`Image.draft`, scaling in the DCT domain): a 63-megapixel photo then costs
12 MB of pixels instead of 190 MB and decodes several times faster, for a 1024 px crop that
looks the same. Other formats are decoded whole and shrunk by a whole factor at once, before
any copy is made (`_reduced`). Sizes and crop boxes are still given in full-resolution pixels.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import pillow_heif
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

# iPhone photos are HEIC; Pillow needs pillow-heif's opener to read them.
pillow_heif.register_heif_opener()
# Register every built-in plugin now: `Image.open(formats=...)` only finds loaded ones (WebP).
Image.init()

MAX_FILE_BYTES = 25 * 1024 * 1024
# 64 megapixels covers every phone's full-resolution mode while keeping one decoded
# image (at most 4 bytes a pixel for CMYK) well under a few hundred MB.
MAX_PIXELS = 64_000_000
# Decoders tried on uploads. MPO (JPEGs with extra frames, from many phones and 3D cameras)
# comes through the JPEG opener, which hands such files to the MPO plugin.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "HEIF")
FORMAT_NAMES = "JPEG, PNG, WebP, HEIC or MPO"
# File name extension to keep the original under, by decoded format.
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "HEIF": "heic"}

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


class PhotoRejected(ValueError):
    """The file cannot be used as a photo; the message says why, for the user."""


@dataclass(frozen=True)
class DecodedPhoto:
    image: Image.Image  # upright, mode RGB, sRGB; 1/scale of the photo's own size
    format: str  # one of ACCEPTED_FORMATS, or MPO
    size: tuple[int, int]  # the upright photo's own (full-resolution) width and height
    scale: int = 1  # how many of the photo's pixels one pixel of `image` stands for, on each axis

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def decode_photo(data: bytes, short_side: int | None = None) -> DecodedPhoto:
    """The upright RGB image in `data`; raises `PhotoRejected` with the reason otherwise.

    With `short_side`, a JPEG may be decoded smaller, keeping at least that many pixels on its
    short side (the crop's resolution): see `DecodedPhoto.scale`.
    """
    if len(data) > MAX_FILE_BYTES:
        raise PhotoRejected(f"too large: files can be at most {MAX_FILE_BYTES // (1024 * 1024)} MB")
    if not data:
        raise PhotoRejected("the file is empty")
    with warnings.catch_warnings():
        # Pillow only warns between its limit and twice it; any bomb is an error here.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except UnidentifiedImageError:
            raise PhotoRejected(f"not an image (send {FORMAT_NAMES} photos)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise PhotoRejected(_too_many_pixels()) from None
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise PhotoRejected(f"the file is damaged ({error})") from None
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise PhotoRejected(_too_many_pixels(width, height))
        if short_side:
            _draft(image, short_side)
        scale = round(width / image.width)
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise PhotoRejected(_too_many_pixels(width, height)) from None
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as error:
            raise PhotoRejected(f"the file is damaged or cut short ({error})") from None
    format = image.format or ""
    if short_side and scale == 1:
        image, scale = _reduced(image, short_side)
    turned = upright(image)
    swapped = turned.size != image.size
    return DecodedPhoto(
        image=to_srgb(turned), format=format, size=(height, width) if swapped else (width, height), scale=scale
    )


def _draft(image: Image.Image, short_side: int) -> None:
    """Let the JPEG decoder scale down by a power of two, keeping `short_side` pixels on the short side."""
    if image.format not in ("JPEG", "MPO"):
        return  # only the JPEG decoder scales while decoding
    width, height = image.size
    ratio = min(width, height) / short_side
    if ratio >= 2:
        # draft picks the largest factor (8, 4, 2) that keeps at least this size on both axes.
        image.draft(None, (math.ceil(width / ratio), math.ceil(height / ratio)))


def _reduced(image: Image.Image, short_side: int) -> tuple[Image.Image, int]:
    """A PNG, WebP or HEIC far larger than the crop needs, shrunk by a whole factor (box average)
    right after decoding, keeping at least `short_side` pixels on the short side; and the factor.

    Only JPEG decodes small (`_draft`); the others decode every pixel, and the copies made after
    (upright, sRGB, white under transparency, the pixel hash) were each as large again: a 250 KB
    PNG of 64 megapixels with transparency took 1.4 GB, a palette PNG of 8 KB 1 GB. Shrunk first,
    those copies are a few MB."""
    factor = min(image.size) // short_side
    if factor < 2:
        return image, 1
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode.startswith("I;16"):
        image = image.convert("I")  # to_srgb scales 32-bit grey to 8 bits as it does 16-bit
    elif image.mode in ("P", "PA"):  # averaging palette indices would mix unrelated colours
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    return image.reduce(factor), factor


def _too_many_pixels(width: int | None = None, height: int | None = None) -> str:
    size = f" ({width}x{height})" if width and height else ""
    return f"too many pixels{size}: at most {MAX_PIXELS // 1_000_000} megapixels"


def upright(image: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation says, so crops are taken from what the user saw."""
    try:
        return ImageOps.exif_transpose(image)
    except (ValueError, TypeError, KeyError, SyntaxError, OSError):
        return image  # unreadable EXIF: the pixels as stored are the best guess


def to_srgb(image: Image.Image) -> Image.Image:
    """RGB in sRGB: alpha composited on white, 16-bit scaled down, colour profiles applied."""
    icc = image.info.get("icc_profile")
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey: Pillow's own conversion clips at 255 instead of scaling.
        image = image.convert("I").point(lambda value: value / 256).convert("L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB")
    if icc and image.mode in ("RGB", "CMYK"):
        converted = _apply_profile(image, icc)
        if converted is not None:
            return converted
    return image.convert("RGB")


def _apply_profile(image: Image.Image, icc: bytes) -> Image.Image | None:
    """Convert through the embedded profile (phones shoot Display P3; print files are CMYK)."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None  # a broken or mismatched profile: plain conversion is close enough
