"""Photo intake on real files made with Pillow: formats, conversions, rejections, duplicates, crops."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from PIL import Image, ImageChops, ImageStat

from engine.usecases.intake.contact_sheet import GAP, THUMBNAIL, contact_sheet_png
from engine.usecases.intake.crop import CropBox, prepare_square
from engine.usecases.intake.decode import decode_photo
from engine.usecases.intake.hashing import NEAR_DUPLICATE_BITS, difference_hash, hash_distance
from engine.usecases.intake.screening import KnownPhoto, Verdict, screen_files

import photo_samples as samples

RESOLUTION = 128


def screen(files: list[tuple[str, bytes]], known: list[KnownPhoto] | None = None, existing: int = 0, most: int = 30) -> list[Verdict]:
    return screen_files(files, known or [], existing, most, RESOLUTION)


def prepared(verdict: Verdict) -> Image.Image:
    assert verdict.photo is not None, verdict
    return Image.open(io.BytesIO(verdict.photo.prepared_png))


@pytest.mark.parametrize(
    ("name", "make", "format"),
    [
        ("IMG_1.jpg", lambda: samples.jpeg(1), "JPEG"),
        ("shot.png", lambda: samples.encode(samples.varied_photo(2), "PNG"), "PNG"),
        ("web.webp", lambda: samples.webp(3), "WEBP"),
        ("IMG_4.HEIC", lambda: samples.heic(4), "HEIF"),
        ("stereo.mpo", lambda: samples.mpo(5), "MPO"),
        ("print.jpg", lambda: samples.cmyk_jpeg(6), "JPEG"),
        ("deep.png", lambda: samples.png16(7), "PNG"),
        ("cutout.png", lambda: samples.rgba_png(8), "PNG"),
        ("palette.png", lambda: samples.palette_png(9), "PNG"),
    ],
)
def test_every_phone_format_is_accepted_as_an_rgb_square(name: str, make: Callable[[], bytes], format: str) -> None:
    data = make()
    assert decode_photo(data).format == format
    [verdict] = screen([(name, data)])
    assert verdict.added, verdict.reason
    crop = prepared(verdict)
    assert crop.mode == "RGB" and crop.size == (RESOLUTION, RESOLUTION)
    assert verdict.photo is not None and verdict.photo.original == data  # the original is kept as sent


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (samples.text_file, "not an image"),
        (lambda: samples.pdf(1), "not an image"),
        (samples.video, "not an image"),
        (lambda: samples.encode(samples.varied_photo(1), "GIF"), "not an image"),
        (lambda: samples.truncated_jpeg(2), "damaged or cut short"),
        (samples.decompression_bomb, "too many pixels"),
        (lambda: samples.oversized_file(3), "at most 25 MB"),
        (lambda: samples.jpeg(4, size=(300, 300)), "too small (300x300)"),
        (lambda: b"", "empty"),
    ],
    ids=["text-renamed-jpg", "pdf", "video", "gif", "truncated-jpeg", "bomb", "over-25MB", "300px", "empty"],
)
def test_unusable_files_are_rejected_with_a_reason(make: Callable[[], bytes], reason: str) -> None:
    [verdict] = screen([("notes.jpg", make())])
    assert verdict.status == "rejected"
    assert reason in verdict.reason
    assert verdict.photo is None


def test_one_bad_file_does_not_stop_the_others() -> None:
    verdicts = screen([("a.jpg", samples.jpeg(1)), ("bad.jpg", samples.text_file()), ("b.jpg", samples.jpeg(2))])
    assert [v.status for v in verdicts] == ["warning", "rejected", "warning"]


def test_exif_orientation_gives_an_upright_crop() -> None:
    [verdict] = screen([("sideways.jpg", samples.exif_rotated_jpeg())])
    assert verdict.photo is not None
    assert (verdict.photo.width, verdict.photo.height) == (600, 800)  # upright portrait, not 800x600
    crop = prepared(verdict)
    top = crop.getpixel((RESOLUTION // 2, 5))
    bottom = crop.getpixel((RESOLUTION // 2, RESOLUTION - 5))
    assert top[0] > 150 and top[2] < 100, top  # red sky up
    assert bottom[2] > 150 and bottom[0] < 100, bottom


def test_transparent_areas_become_white() -> None:
    [verdict] = screen([("cutout.png", samples.rgba_png(8))])
    # The left third of the 640x560 photo is transparent; the centred 560 crop starts at x=40.
    assert prepared(verdict).getpixel((5, RESOLUTION // 2)) == (255, 255, 255)


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    image = decode_photo(samples.png16(7)).image
    # Mostly 32768/65535 grey: about 128, not blown out to white.
    assert 110 < ImageStat.Stat(image.convert("L")).median[0] < 145


def test_cmyk_colours_survive() -> None:
    original = samples.varied_photo(6)
    decoded = decode_photo(samples.cmyk_jpeg(6)).image
    for expected, got in zip(ImageStat.Stat(original).mean, ImageStat.Stat(decoded).mean):
        assert abs(expected - got) < 20


def test_small_photos_are_accepted_with_a_warning_and_big_ones_without() -> None:
    small, big = screen([("small.jpg", samples.jpeg(1, size=(800, 600))), ("big.jpg", samples.jpeg(2, size=(1100, 1030)))])
    assert small.status == "warning" and "small (800x600)" in small.reason
    assert big.status == "accepted" and big.reason == ""


def test_square_crop_is_centred_and_recorded() -> None:
    [wide] = screen([("wide.jpg", samples.jpeg(1, size=(900, 600)))])
    assert wide.photo is not None
    crop = wide.photo.crop
    assert (crop.left, crop.top, crop.size) == (150, 0, 600)
    [tall] = screen([("tall.jpg", samples.jpeg(2, size=(600, 1000)))])
    assert tall.photo is not None
    assert (tall.photo.crop.left, tall.photo.crop.top, tall.photo.crop.size) == (0, 200, 600)


def test_same_pixels_in_another_format_are_exact_duplicates() -> None:
    png = samples.encode(samples.varied_photo(5), "PNG")
    verdicts = screen([("IMG_1.png", png), ("IMG_1.webp", samples.webp(5, lossless=True))])
    assert verdicts[0].added
    assert verdicts[1].status == "skipped" and verdicts[1].reason == "duplicate of IMG_1.png"


def test_recompressed_copy_is_a_near_duplicate() -> None:
    png = samples.encode(samples.varied_photo(5), "PNG")
    verdicts = screen([("IMG_1.png", png), ("IMG_1 copy.jpg", samples.jpeg(5, quality=95))])
    assert verdicts[1].status == "skipped"
    assert verdicts[1].reason.startswith("near-duplicate of IMG_1.png")


def test_duplicates_of_photos_taught_before_name_the_earlier_file() -> None:
    [first] = screen([("IMG_1.jpg", samples.jpeg(1))])
    assert first.photo is not None
    known = [KnownPhoto(first.photo.sha256, first.photo.phash, "IMG_1.jpg", taught_before=True)]
    [again] = screen([("IMG_1 (1).jpg", samples.jpeg(1))], known=known, existing=1)
    assert again.status == "skipped" and again.reason == "duplicate of IMG_1.jpg, taught before"


def test_varied_photos_are_not_near_duplicates_of_each_other() -> None:
    hashes = [difference_hash(samples.varied_photo(seed)) for seed in range(12)]
    closest = min(hash_distance(a, b) for i, a in enumerate(hashes) for b in hashes[:i])
    assert closest > NEAR_DUPLICATE_BITS
    verdicts = screen([(f"IMG_{seed}.jpg", samples.jpeg(seed)) for seed in range(12)])
    assert all(verdict.added for verdict in verdicts)


def test_files_past_the_maximum_are_skipped() -> None:
    verdicts = screen([(f"IMG_{seed}.jpg", samples.jpeg(seed)) for seed in range(3)], existing=29, most=30)
    assert [v.status for v in verdicts] == ["warning", "skipped", "skipped"]
    assert verdicts[1].reason == "the pet already has 30 photos, the most allowed"


def test_contact_sheet_is_a_grid_of_the_crops(tmp_path) -> None:
    crops = []
    for seed in range(7):
        path = tmp_path / f"{seed}.png"
        samples.varied_photo(seed, (RESOLUTION, RESOLUTION)).save(path)
        crops.append(path)
    sheet = Image.open(io.BytesIO(contact_sheet_png(crops)))
    assert sheet.size == (GAP + 5 * (THUMBNAIL + GAP), GAP + 2 * (THUMBNAIL + GAP))  # 5 across, 2 rows
    # The 8th cell is empty (white), the 7th is a photo.
    assert sheet.getpixel((GAP + 2 * (THUMBNAIL + GAP) + 128, GAP + THUMBNAIL + GAP + 128)) == (255, 255, 255)
    assert sheet.getpixel((GAP + 1 * (THUMBNAIL + GAP) + 128, GAP + THUMBNAIL + GAP + 128)) != (255, 255, 255)


def test_a_large_jpeg_is_decoded_small_with_the_crop_a_member_would_see() -> None:
    # 3,000 x 2,000 stored sideways (EXIF orientation 6): far more than a 128 px crop needs.
    exif = Image.Exif()
    exif[0x0112] = 6
    data = samples.encode(samples.varied_photo(21, (3000, 2000)), "JPEG", quality=95, exif=exif)
    decoded = decode_photo(data, short_side=RESOLUTION)
    assert decoded.image.size == (250, 375) and decoded.scale == 8  # 1/8 of the pixels on each axis
    assert decoded.size == (2000, 3000)  # sizes stay in the upright photo's own pixels

    [verdict] = screen([("big.jpg", data)])
    photo = verdict.photo
    assert photo is not None and verdict.status == "accepted"
    assert (photo.width, photo.height) == (2000, 3000) and photo.crop == CropBox(left=0, top=500, size=2000)
    everything = decode_photo(data).image  # every pixel decoded, as before
    expected = prepare_square(everything, photo.crop, RESOLUTION)
    difference = ImageStat.Stat(ImageChops.difference(prepared(verdict), expected)).mean
    assert max(difference) < 2.0, difference  # the same picture, within JPEG's own rounding
    # Sent again, it is an exact duplicate; a copy taught from every pixel still matches its dHash.
    [again] = screen([("again.jpg", data)], [KnownPhoto(photo.sha256, photo.phash, "big.jpg", taught_before=True)])
    assert again.status == "skipped" and again.reason == "duplicate of big.jpg, taught before"
    assert hash_distance(photo.phash, difference_hash(everything)) <= NEAR_DUPLICATE_BITS
