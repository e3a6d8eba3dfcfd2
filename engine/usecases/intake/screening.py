"""Decide, file by file, what a batch of uploads adds to a pet, and prepare what it keeps.

Every file gets one verdict with a reason a user understands: accepted (possibly with a
warning), rejected (not a usable photo) or skipped (a duplicate, or no room left).
Duplicates are looked for among the pet's earlier photos and the earlier files of the same
batch. This is CPU work with no I/O besides the bytes given, meant to run in a thread.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from engine.usecases.intake.crop import CropBox, centred_box, prepare_square
from engine.usecases.intake.decode import PhotoRejected, decode_photo
from engine.usecases.intake.hashing import NEAR_DUPLICATE_BITS, difference_hash, hash_distance, pixel_sha256

MIN_SHORT_SIDE = 512
GOOD_SHORT_SIDE = 1024

Status = Literal["accepted", "warning", "rejected", "skipped"]


@dataclass(frozen=True)
class KnownPhoto:
    """A photo the pet already has (or an earlier file of this batch), for duplicate checks."""

    sha256: str
    phash: str
    original_name: str
    taught_before: bool


@dataclass(frozen=True)
class PreparedPhoto:
    """Everything storage needs to keep one accepted photo.

    The original is kept as the exact bytes sent rather than re-encoded: nothing is lost
    (a new crop or a better decoder later starts from the real file), it is several times
    smaller than a PNG of the pixels, and it costs no encoding time. Re-cropping applies
    the EXIF orientation again, as `decode_photo` does, so the stored crop box still fits.
    """

    original: bytes  # the file exactly as sent
    extension: str
    prepared_png: bytes  # the square training crop
    sha256: str
    phash: str
    width: int  # of the upright original
    height: int
    crop: CropBox


@dataclass(frozen=True)
class Verdict:
    name: str
    status: Status
    reason: str = ""
    photo: PreparedPhoto | None = None

    @property
    def added(self) -> bool:
        return self.status in ("accepted", "warning")


def screen_files(
    files: Sequence[tuple[str, bytes]],
    known: Sequence[KnownPhoto],
    existing_count: int,
    max_photos: int,
    resolution: int,
) -> list[Verdict]:
    """One verdict per file, in order; accepted ones carry their prepared photo."""
    seen = list(known)
    count = existing_count
    verdicts = []
    for name, data in files:
        if count >= max_photos:
            verdicts.append(Verdict(name, "skipped", f"the pet already has {count} photos, the most allowed"))
            continue
        verdict = screen_one(name, data, seen, resolution)
        if verdict.photo is not None:
            count += 1
            seen.append(KnownPhoto(verdict.photo.sha256, verdict.photo.phash, name, taught_before=False))
        verdicts.append(verdict)
    return verdicts


def screen_one(name: str, data: bytes, seen: Sequence[KnownPhoto], resolution: int) -> Verdict:
    try:
        decoded = decode_photo(data, short_side=resolution)
    except PhotoRejected as error:
        return Verdict(name, "rejected", str(error))
    image = decoded.image
    width, height = decoded.size
    short_side = min(width, height)
    if short_side < MIN_SHORT_SIDE:
        return Verdict(
            name,
            "rejected",
            f"too small ({width}x{height}): photos need at least {MIN_SHORT_SIDE} px "
            f"on the short side ({GOOD_SHORT_SIDE}+ is best)",
        )
    sha256 = pixel_sha256(image)
    phash = difference_hash(image)
    duplicate = find_duplicate(sha256, phash, seen)
    if duplicate is not None:
        return Verdict(name, "skipped", duplicate)
    crop = centred_box(width, height)
    prepared = io.BytesIO()
    prepare_square(image, crop, resolution, decoded.scale).save(prepared, format="PNG", compress_level=3)
    photo = PreparedPhoto(
        original=data,
        extension=decoded.extension,
        prepared_png=prepared.getvalue(),
        sha256=sha256,
        phash=phash,
        width=width,
        height=height,
        crop=crop,
    )
    if short_side < GOOD_SHORT_SIDE:
        reason = (
            f"accepted, but it is small ({width}x{height}); photos of {GOOD_SHORT_SIDE} px "
            "or more on the short side train sharper"
        )
        return Verdict(name, "warning", reason, photo)
    return Verdict(name, "accepted", "", photo)


def find_duplicate(sha256: str, phash: str, seen: Sequence[KnownPhoto]) -> str | None:
    """Why this photo duplicates an earlier one (exact match first), or None."""
    for earlier in seen:
        if earlier.sha256 == sha256:
            return f"duplicate of {earlier.original_name}{_taught(earlier)}"
    for earlier in seen:
        if hash_distance(earlier.phash, phash) <= NEAR_DUPLICATE_BITS:
            return f"near-duplicate of {earlier.original_name}{_taught(earlier)} (almost the same picture)"
    return None


def _taught(earlier: KnownPhoto) -> str:
    return ", taught before" if earlier.taught_before else ""
