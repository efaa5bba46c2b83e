"""Pixel work on a decoded Pillow image: EXIF orientation, conversion to 8-bit RGB, draft reduce.

``decode.load_image`` opens and decodes a file; the functions here take the decoded
``PIL.Image.Image`` from there to the upright, 8-bit ``RGB`` image a model's processor gets.
None of them opens a file or touches Pillow's process-wide settings.

This module must not import torch.
"""

from __future__ import annotations

from PIL import ExifTags, Image, ImageOps

from ..errors import describe

#: EXIF/TIFF tag 274 (Orientation) values 2-8 and the transposition that undoes each (TIFF 6.0
#: section 8 "Orientation"; CIPA DC-008 Exif 2.32, 4.6.4 A). 1 is upright.
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: Orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_WHITE = (255, 255, 255)


def orientation(im: Image.Image) -> tuple[int, str | None]:
    """EXIF orientation tag (1-8, 1 when absent) and a note when it cannot be read or is invalid.

    pillow-heif applies the HEIF rotation/mirroring (``irot``/``imir``) while decoding and resets
    the EXIF/XMP orientation to 1 (pillow_heif.misc.set_orientation), so HEIC files are not
    rotated twice here.
    """
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as exc:
        return 1, f"EXIF orientation unreadable ({describe(exc, whole=True)}); used unrotated"
    if value == 0:  # written by some cameras for "unknown"; not in the spec, treated as upright
        return 1, None
    if isinstance(value, int) and (value == 1 or value in _EXIF_TRANSPOSE):
        return value, None
    return 1, f"EXIF orientation {value!r} is not 1-8; used unrotated"


def upright(im: Image.Image) -> tuple[Image.Image, bool, str | None]:
    """Apply the EXIF orientation of ``im``.

    Returns:
        ``(image, swapped, note)``: the upright image (``im`` itself when the tag is 1, absent or
        unusable), whether width and height swapped (orientations 5-8), and a note when the tag
        could not be used or the EXIF block was malformed, else ``None``.
    """
    value, note = orientation(im)
    if note or value == 1:
        return im, False, note
    swapped = value in _SWAPPING_ORIENTATIONS
    try:
        return ImageOps.exif_transpose(im), swapped, None
    except Exception as exc:
        # exif_transpose transposes first, then rewrites the EXIF block without the tag; a
        # malformed unrelated tag can make that rewrite fail. The pixels only need the tag.
        note = f"EXIF data malformed ({describe(exc, whole=True)}); orientation {value} applied"
        return im.transpose(_EXIF_TRANSPOSE[value]), swapped, note


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit ``RGB``.

    Transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a ``transparency`` entry, premultiplied
    ``RGBa``/``La``) is composited onto white. 16-bit ``I;16*`` is divided by 256; 32-bit ``I`` and
    float ``F`` are mapped linearly onto 0-255 from the range ``_rescale`` picks, never clamped to white.
    ``CMYK``, ``YCbCr``, ``1``, ``L``, plain ``P`` go through ``Image.convert`` (no colour
    management: ICC profiles are ignored).
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode.startswith("I;16"):
        return im.convert("I").point(lambda x: x * (1 / 256)).convert("L").convert("RGB")
    if mode in ("I", "F"):
        return _rescale(im).convert("RGB")
    return im.convert("RGB")


def _rescale(im: Image.Image) -> Image.Image:
    """Map a 32-bit ``I`` or ``F`` image linearly to ``L``.

    The source range is ``[min(lo, 0), top]`` where ``top`` is 1.0 for ``F`` data within 0-1
    (normalised floats), else 255 for data within 0-255, else the actual maximum ``hi``; so
    ``top >= 1 > low`` and the range is never empty.
    """
    lo, hi = im.getextrema()
    low = min(lo, 0)
    if im.mode == "F" and hi <= 1.0:
        top = 1.0
    elif hi <= 255:
        top = 255
    else:
        top = hi
    scale = 255.0 / (top - low)
    offset = -low * scale
    return im.point(lambda x: x * scale + offset).convert("L")


def reduce_for(im: Image.Image, draft_size: int) -> Image.Image:
    """Box-reduce ``im`` by the largest integer factor keeping its short side >= ``2 * draft_size``
    (``im`` itself when that factor is below 2); ``draft_size`` is the model's input size in px."""
    factor = min(im.size) // (2 * draft_size)
    return im.reduce(factor) if factor >= 2 else im
