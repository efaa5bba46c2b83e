"""Tests of core.input.load_image: categories of failure, orientation, draft decode, modes, HEIC.

Generated files go to tmp_path; real camera files come from ../shared/data/exif-samples (skipped
when absent).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageFile, ImageStat

from tests.helpers import encoded, noise_image, png_claiming
from wwts.core.errors import ImageError
from wwts.core.input import HEIF_SUPPORTED, SUPPORTED_FORMATS, DecodedImage, load_image

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "exif-samples"


def sample(*parts: str) -> Path:
    path = SAMPLES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"test data not present: {path}")
    return path


def header(path: Path) -> tuple[str, tuple[int, int]]:
    """(mode, size) as stored in the file, read with Pillow directly."""
    with Image.open(path) as im:
        return im.mode, im.size


def category(path: Path, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        load_image(path, **kwargs)
    return info.value.category


# --- failure categories -------------------------------------------------------------------------


def test_not_found(tmp_path):
    assert category(tmp_path / "missing.jpg") == "not_found"


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_broken_symlinks_are_link_errors(tmp_path):
    dangling = tmp_path / "link.jpg"
    dangling.symlink_to(tmp_path / "gone.jpg")
    loop = tmp_path / "loop.jpg"
    loop.symlink_to("loop.jpg")
    with pytest.raises(ImageError) as info:
        load_image(dangling)
    assert info.value.category == "link" and "gone.jpg" in str(info.value)
    assert category(loop) == "link"
    assert category(tmp_path / "missing.jpg") == "not_found"  # no link: still not_found


def test_directory_named_like_an_image_is_not_a_file(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    assert category(tmp_path / "x.jpg") == "not_a_file"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(category(fifo)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "load_image blocked on a FIFO"
    assert result == ["not_a_file"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_permission(tmp_path):
    path = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(path)
    path.chmod(0)
    try:
        assert category(path) == "permission"
    finally:
        path.chmod(0o644)


def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert category(tmp_path / "empty.jpg") == "empty"


def test_html_saved_as_jpg_is_unidentified(tmp_path):
    path = tmp_path / "page.jpg"
    path.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>", encoding="utf-8")
    assert category(path) == "unidentified"


def test_format_outside_the_list_is_unidentified(tmp_path):
    path = tmp_path / "icon.jpg"  # an ICO: Pillow reads it, but it is not a photo format we accept
    Image.new("RGB", (16, 16)).save(path, "ICO")
    assert category(path) == "unidentified"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "TIFF", "BMP"])
def test_truncated_file(tmp_path, fmt):
    data = encoded(noise_image(), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    assert category(path) == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_allowed(tmp_path, fmt):
    data = encoded(noise_image(), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    decoded = load_image(path, allow_truncated=True)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (400, 300) == (decoded.width, decoded.height)
    assert "truncated" in decoded.note
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the global switch is put back


def test_too_large_from_max_pixels(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(path)
    assert category(path, max_pixels=9_999) == "too_large"
    assert load_image(path, max_pixels=10_000).image.size == (100, 100)


def test_extreme_aspect_ratio_refused_from_the_header(tmp_path):
    # a 107-byte 8000x1 PNG: a CLIP processor would scale it to 1,792,000x224 (4.3 GB peak)
    thin, tall, edge = tmp_path / "thin.png", tmp_path / "tall.png", tmp_path / "edge.png"
    Image.new("RGB", (8000, 1)).save(thin)
    Image.new("RGB", (2, 403)).save(tall)
    Image.new("RGB", (10, 2000)).save(edge)  # exactly 200:1, what Qwen2-VL's processor accepts
    with pytest.raises(ImageError) as info:
        load_image(thin, draft_size=224)
    assert info.value.category == "aspect_ratio"
    assert "8000x1" in str(info.value) and "200:1" in str(info.value)
    assert category(tall) == "aspect_ratio"
    assert load_image(edge).image.size == (10, 2000)
    assert load_image(thin, max_aspect_ratio=None).image.size == (8000, 1)
    assert load_image(tall, max_aspect_ratio=300).width == 2


def test_decompression_bomb_refused_from_the_header(tmp_path):
    # 30000 x 30000 is over twice Pillow's default limit; the file holds no such pixels, so only a
    # header check can produce "too_large" (decoding would report "truncated" instead).
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(30_000, 30_000))
    assert category(path) == "too_large"


def test_default_limit_is_pillows_max_image_pixels(tmp_path):
    side = int(Image.MAX_IMAGE_PIXELS**0.5) + 10  # above the limit, below Pillow's hard 2x limit
    path = tmp_path / "big.png"
    path.write_bytes(png_claiming(side, side))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert category(path) == "too_large"
        # a larger explicit limit lets it through to the decoder, which finds the data missing
        assert category(path, max_pixels=side * side) == "truncated"


def test_corrupt_data_is_decode(tmp_path):
    data = bytearray(encoded(Image.new("RGB", (64, 64), "red"), "PNG"))
    idat = data.find(b"IDAT")
    data[idat + 10 : idat + 20] = bytes(10)  # break the zlib stream, keep the header valid
    path = tmp_path / "broken.png"
    path.write_bytes(bytes(data))
    assert category(path) == "decode"


def test_error_message_is_category_prefixed(tmp_path):
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "missing.png")
    assert str(info.value).startswith("not_found: ")


# --- orientation and draft ----------------------------------------------------------------------


def jpeg_with_orientation(path: Path, orientation, size=(40, 20)) -> None:
    """Left half red, right half blue, stored with the given EXIF orientation tag."""
    im = Image.new("RGB", size, "blue")
    im.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, "JPEG", exif=exif, quality=95)


def is_red(pixel) -> bool:
    return pixel[0] > 200 and pixel[2] < 60


def test_orientation_6_rotates_and_swaps_size(tmp_path):
    path = tmp_path / "o6.jpg"
    jpeg_with_orientation(path, 6)
    decoded = load_image(path)
    assert decoded.image.size == (20, 40)
    assert (decoded.width, decoded.height) == (20, 40)
    # orientation 6: the stored image is turned 90 degrees clockwise for display, so the stored
    # left (red) half ends up on top
    assert is_red(decoded.image.getpixel((10, 5)))
    assert not is_red(decoded.image.getpixel((10, 35)))
    assert decoded.note is None


def test_invalid_orientation_value_used_unrotated_with_note(tmp_path):
    path = tmp_path / "o9.jpg"
    jpeg_with_orientation(path, 9)
    decoded = load_image(path)
    assert decoded.image.size == (40, 20)
    assert "orientation" in decoded.note


def test_orientation_0_means_upright_without_note(tmp_path):
    path = tmp_path / "o0.jpg"
    jpeg_with_orientation(path, 0)
    decoded = load_image(path)
    assert decoded.image.size == (40, 20) and decoded.note is None


def test_malformed_exif_still_applies_the_orientation(tmp_path):
    # A well-formed orientation tag next to a tag with an impossible value: Pillow reads the
    # orientation but ImageOps.exif_transpose fails rewriting the EXIF block.
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Canon"
    raw = exif.tobytes().replace(b"\x01\x0f\x00\x02", b"\x01\x23\x00\x02")  # Make -> tag 0x0123
    im = Image.new("RGB", (40, 20), "blue")
    im.paste((255, 0, 0), (0, 0, 20, 20))
    path = tmp_path / "bad_exif.jpg"
    im.save(path, "JPEG", exif=raw, quality=95)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pillow's "Corrupt EXIF data" warnings
        decoded = load_image(path)
    assert decoded.image.size == (20, 40) == (decoded.width, decoded.height)
    assert is_red(decoded.image.getpixel((10, 5)))
    assert decoded.note and "EXIF" in decoded.note


def test_draft_decode_is_smaller_but_reports_original_size(tmp_path):
    path = tmp_path / "big.jpg"
    noise_image((1000, 800)).save(path, quality=90)
    decoded = load_image(path, draft_size=100)
    # request (200, 200): Pillow picks scale min(1000 // 200, 800 // 200) = 4 -> 250 x 200
    assert decoded.image.size == (250, 200)
    assert (decoded.width, decoded.height) == (1000, 800)
    assert load_image(path).image.size == (1000, 800)


def test_draft_keeps_short_side_at_least_twice_the_model_input(tmp_path):
    path = tmp_path / "wide.jpg"
    noise_image((2400, 500)).save(path, quality=90)
    decoded = load_image(path, draft_size=112)
    assert min(decoded.image.size) >= 224
    assert decoded.image.size == (1200, 250)  # scale 2: 500 // 224 = 2


def test_draft_with_orientation_reports_rotated_original_size(tmp_path):
    path = tmp_path / "o6big.jpg"
    jpeg_with_orientation(path, 6, size=(800, 400))
    decoded = load_image(path, draft_size=50)
    assert decoded.image.size == (100, 200)  # scale 4, then rotated
    assert (decoded.width, decoded.height) == (400, 800)


def test_formats_without_draft_are_box_reduced_after_decoding(tmp_path):
    path = tmp_path / "big.png"
    noise_image((1000, 800)).save(path)
    full = load_image(path).image
    decoded = load_image(path, draft_size=100)
    assert decoded.image.size == (250, 200)  # factor 800 // 200 = 4: short side stays >= 2 * 100
    assert (decoded.width, decoded.height) == (1000, 800)
    a, b = (im.resize((50, 40), Image.Resampling.BOX).convert("L") for im in (full, decoded.image))
    assert ImageStat.Stat(ImageChops.difference(a, b)).mean[0] < 2  # same picture, only smaller


def test_no_reduction_below_twice_the_model_input(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (640, 399), "green").save(path)
    assert load_image(path, draft_size=100).image.size == (640, 399)  # 399 // 200 = 1


def test_reduction_after_orientation_keeps_the_rotated_shape(tmp_path):
    path = tmp_path / "o6.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    noise_image((1200, 600)).save(path, exif=exif)
    decoded = load_image(path, draft_size=100)
    assert decoded.image.size == (200, 400) and (decoded.width, decoded.height) == (600, 1200)


# --- mode conversion ----------------------------------------------------------------------------


def test_16bit_grey_png_is_scaled_not_white(tmp_path):
    im = Image.linear_gradient("L").resize((64, 64)).point(lambda v: v * 256, "I").convert("I;16")
    path = tmp_path / "grey16.png"
    im.save(path)
    assert header(path)[0].startswith("I;16")
    rgb = load_image(path).image
    assert rgb.mode == "RGB"
    top, bottom = rgb.getpixel((32, 0)), rgb.getpixel((32, 63))
    assert top[0] < 10 and bottom[0] > 240  # full range kept: dark stays dark, bright stays bright
    mid = Image.new("I;16", (8, 8), 30000)
    mid.save(tmp_path / "mid16.png")
    assert load_image(tmp_path / "mid16.png").image.getpixel((0, 0)) == (117, 117, 117)  # 30000/256


def test_32bit_int_tiff_scaled_by_range(tmp_path):
    im = Image.linear_gradient("L").resize((64, 64)).point(lambda v: v * 1000, "I")  # 0..255000
    path = tmp_path / "int32.tif"
    im.save(path)
    assert header(path)[0] == "I"
    rgb = load_image(path).image
    assert rgb.getpixel((0, 0))[0] < 10 and rgb.getpixel((0, 63))[0] > 240
    assert 100 < rgb.getpixel((0, 32))[0] < 156


def test_float_tiff_in_unit_range(tmp_path):
    path = tmp_path / "float.tif"
    Image.new("F", (8, 8), 0.5).save(path)
    assert load_image(path).image.getpixel((0, 0))[0] in (127, 128)


def test_rgba_is_composited_on_white(tmp_path):
    im = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    im.putpixel((1, 1), (255, 0, 0, 255))
    im.putpixel((2, 2), (0, 0, 0, 128))
    im.save(tmp_path / "rgba.png")
    rgb = load_image(tmp_path / "rgba.png").image
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 255, 255)  # fully transparent -> white, not red or black
    assert rgb.getpixel((1, 1)) == (255, 0, 0)
    assert all(120 <= c <= 135 for c in rgb.getpixel((2, 2)))  # half black over white


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0, 255, 0, 0])
    im.putpixel((3, 3), 1)
    im.save(tmp_path / "p.gif", transparency=0)
    rgb = load_image(tmp_path / "p.gif").image
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((3, 3)) == (255, 0, 0)


def test_la_and_1_and_cmyk_become_rgb(tmp_path):
    Image.new("LA", (4, 4), (0, 255)).save(tmp_path / "la.png")
    Image.new("1", (4, 4), 1).save(tmp_path / "one.png")
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    assert load_image(tmp_path / "la.png").image.getpixel((0, 0)) == (0, 0, 0)
    assert load_image(tmp_path / "one.png").image.getpixel((0, 0)) == (255, 255, 255)
    red = load_image(tmp_path / "cmyk.jpg").image.getpixel((0, 0))
    assert red[0] > 240 and red[1] < 20 and red[2] < 20


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_first_frame_and_frame_count(tmp_path, fmt):
    if fmt not in SUPPORTED_FORMATS:
        pytest.skip(f"{fmt} not supported by this Pillow build")
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "green", "blue")]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    decoded = load_image(path)
    assert decoded.frames == 3
    assert is_red(decoded.image.getpixel((8, 8)))
    assert decoded.image.mode == "RGB"


def test_still_image_has_one_frame(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "still.png")
    assert load_image(tmp_path / "still.png").frames == 1


def test_extension_does_not_decide_the_format(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    Image.new("RGB", (5, 7), "red").save(path, "PNG")
    decoded = load_image(path)
    assert isinstance(decoded, DecodedImage) and decoded.image.size == (5, 7)


# --- real files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["landscape", "portrait"])
def test_real_orientation_set_all_display_alike(kind):
    folder = sample("jpg", "orientation")
    reference = load_image(folder / f"{kind}_1.jpg").image.convert("L")
    for k in range(2, 9):
        path = folder / f"{kind}_{k}.jpg"
        decoded = load_image(path)
        assert decoded.image.size == reference.size == (decoded.width, decoded.height), path.name
        # the files differ only in the digit drawn on them; a wrong transposition differs by > 40
        diff = ImageStat.Stat(ImageChops.difference(reference, decoded.image.convert("L"))).mean[0]
        assert diff < 25, (path.name, diff)


def test_real_jpeg_with_orientation_6_and_draft():
    path = sample("jpg", "orientation", "landscape_6.jpg")
    assert header(path)[1] == (450, 600)  # stored portrait, displayed landscape
    decoded = load_image(path, draft_size=100)
    assert (decoded.width, decoded.height) == (600, 450)
    assert decoded.image.size == (300, 225)  # scale 2 (450 // 200), then rotated


@pytest.mark.skipif(not HEIF_SUPPORTED, reason="pillow-heif not available")
def test_heic_orientation_applied_once():
    # The iPhone file stores a landscape sensor image with irot=270 and EXIF orientation 6;
    # libheif applies irot and pillow-heif resets the EXIF tag, so the result is portrait.
    # Rotating again from EXIF would give 4032 x 3024.
    path = sample("heic", "mobile", "iphone_13_pro_max.HEIC")
    decoded = load_image(path)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (3024, 4032) == (decoded.width, decoded.height)


@pytest.mark.skipif(not HEIF_SUPPORTED, reason="pillow-heif not available")
def test_heic_draft_uses_embedded_thumbnail_with_same_orientation():
    path = sample("heic", "mobile", "iphone_13_pro_max.HEIC")
    full = load_image(path).image
    small = load_image(path, draft_size=100)
    assert small.image.size == (240, 320)  # the embedded 320 px thumbnail, oriented alike
    assert (small.width, small.height) == (3024, 4032)
    a, b = (im.resize((60, 80)).convert("L") for im in (full, small.image))
    assert ImageStat.Stat(ImageChops.difference(a, b)).mean[0] < 12


@pytest.mark.skipif(not HEIF_SUPPORTED, reason="pillow-heif not available")
def test_heif_without_rotation():
    decoded = load_image(sample("heic", "samplefilehub.heif"))
    assert decoded.image.size == (640, 426) and decoded.image.mode == "RGB"


def test_every_sample_file_decodes_or_raises_image_error():
    if not SAMPLES.exists():
        pytest.skip(f"test data not present: {SAMPLES}")
    files = sorted(p for p in SAMPLES.rglob("*") if p.is_file())
    assert files
    decoded = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about the broken EXIF blocks in jpg/tests
        for path in files:
            try:
                result = load_image(path, draft_size=224)
            except ImageError as exc:
                assert exc.category in {"unidentified", "truncated", "decode"}, (path, exc)
                continue
            assert result.image.mode == "RGB", path
            assert result.width >= result.image.width and result.height >= result.image.height
            assert min(result.image.size) >= min(448, result.width, result.height), path
            decoded += 1
    assert decoded >= len(files) - 12  # READMEs aside, the photos decode


def test_parallel_decoding_matches_sequential():
    folder = sample("jpg", "tests")
    paths = sorted(folder.glob("*.jp*g"))

    def digest(path):
        try:
            d = load_image(path, draft_size=112)
        except ImageError as exc:
            return str(exc)
        return d.image.size, d.width, d.height, d.image.resize((8, 8)).tobytes()

    with warnings.catch_warnings():  # set once, outside the threads (it is not thread-safe)
        warnings.simplefilter("ignore")
        sequential = [digest(p) for p in paths]
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(digest, paths)) == sequential


def test_module_does_not_import_torch():
    code = "import sys, wwts.core.input; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
