"""Decode one image file into an RGB ``PIL.Image.Image`` ready for a model's image processor.

``load_image`` is the only entry point. It opens the file itself (a FIFO, socket or directory is
refused from ``fstat`` before any read, so it can never hang), identifies it against an explicit
list of formats, refuses decompression bombs from the header, optionally DCT-scales JPEGs while
decoding (``Image.draft``), then has ``pixels`` apply the EXIF orientation and convert every
mode to 8-bit RGB. Every failure becomes an ``ImageError(category, message)``; no other exception
leaves it.

Thread safety: the engine calls ``load_image`` from a thread pool (Pillow releases the GIL while
decoding). Nothing here mutates module-level state of Pillow on the normal path; the one exception
is the opt-in ``allow_truncated=True`` retry, see ``load_image``. Plugins are registered once, at
import time, so no lazy plugin import races between threads.

This module must not import torch.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageFile, UnidentifiedImageError, features

from ..errors import ImageError, describe
from . import pixels

logger = logging.getLogger(__name__)

try:  # HEIF/HEIC (iPhone photos) through libheif; a declared dependency, but keep working without it
    import pillow_heif

    # One libheif thread per decode: wwts already decodes several files in parallel, and the
    # default (4 threads each) oversubscribes small machines.
    pillow_heif.register_heif_opener(decode_threads=1)
except Exception as _exc:  # ImportError, or a broken libheif build
    logger.debug("HEIF decoding unavailable: %s", _exc)

Image.init()  # import every Pillow plugin now, once, instead of lazily from decode threads

#: Formats ``load_image`` tries, in order (names as in Pillow's registry). WEBP and AVIF are listed
#: only when Pillow was built with libwebp / libavif, HEIF only when pillow-heif registered itself.
#: MPO (multi-picture JPEG from some cameras) has no opener of its own: Pillow's JPEG opener
#: returns an ``MpoImageFile`` for it.
SUPPORTED_FORMATS: tuple[str, ...] = tuple(
    name
    for name in ("JPEG", "PNG", "WEBP", "HEIF", "AVIF", "BMP", "GIF", "TIFF")
    if name in Image.OPEN and (name not in ("WEBP", "AVIF") or features.check(name.lower()))
)
#: True when HEIF/HEIC files can be decoded (pillow-heif importable and registered).
HEIF_SUPPORTED: bool = "HEIF" in SUPPORTED_FORMATS
#: True when AVIF files can be decoded (Pillow >= 11.2 built with libavif).
AVIF_SUPPORTED: bool = "AVIF" in SUPPORTED_FORMATS

#: Formats whose ``draft()`` makes decoding cheaper: JPEG/MPO scale the DCT by 1/2, 1/4 or 1/8;
#: pillow-heif's picks an embedded thumbnail that is a scaled copy of the image, if one is big enough.
_DRAFT_FORMATS = frozenset({"JPEG", "MPO", "HEIF"})
#: Widest aspect ratio (long side / short side) ``load_image`` accepts by default, checked from the
#: header before any pixel is decoded. CLIP-style image processors scale the *short* side to the
#: model's input size before cropping, so an 8000x1 PNG of 107 bytes became a 1,792,000x224
#: intermediate image and a 4.3 GB peak (measured: ``wwts classify`` of that one file with a
#: 224 px Chinese-CLIP processor). At this limit the intermediate is at most ``200 * S * S``
#: pixels for an ``S`` px model (10 MP for 224 px). 200 is the limit Qwen2-VL's own image
#: processor enforces: transformers ``models/qwen2_vl/image_processing_qwen2_vl.py``
#: ``smart_resize`` raises "absolute aspect ratio must be smaller than 200" when
#: ``max(h, w) / min(h, w) > 200``. Real panoramas and long screenshots stay far below it.
MAX_ASPECT_RATIO = 200

#: Serialises the opt-in truncated-image retry, the only place that sets the process-wide
#: ``ImageFile.LOAD_TRUNCATED_IMAGES`` (Pillow has no per-image switch for it).
_TRUNCATED_LOCK = threading.Lock()


@dataclass
class DecodedImage:
    """One decoded image.

    Attributes:
        image: the pixels, mode ``"RGB"``, EXIF orientation applied. When ``load_image`` was given
            ``draft_size`` it may be smaller than ``width`` x ``height`` (short side still at least
            ``2 * draft_size`` unless the original is smaller). ``None`` in a decode pool's
            ``Sample`` once the task's transform has made model inputs from it.
        width: width in pixels of the original, full-resolution image after EXIF orientation.
        height: height in pixels, likewise.
        frames: number of frames (animated GIF/WebP/PNG) or images (multi-page TIFF, MPO, HEIF
            sequences) in the file; only the first (for HEIF: the primary) one is decoded.
        note: a non-fatal remark, e.g. ``"EXIF orientation unreadable; used unrotated"``.
    """

    image: Image.Image | None
    width: int
    height: int
    frames: int = 1
    note: str | None = None


def load_image(
    path: Path,
    *,
    draft_size: int | None = None,
    max_pixels: int | None = None,
    allow_truncated: bool = False,
    max_aspect_ratio: float | None = MAX_ASPECT_RATIO,
    draft_keep: int = 2,
) -> DecodedImage:
    """Decode ``path`` into an 8-bit RGB image with its EXIF orientation applied.

    Args:
        path: the file. Its extension is ignored: the content decides the format, tried in the
            order of ``SUPPORTED_FORMATS``.
        draft_size: the model's input size in pixels (e.g. 224). For JPEG/MPO the decoder then
            DCT-scales by 1/2, 1/4 or 1/8 while decoding (``Image.draft``), choosing the largest
            reduction that keeps the short side at least ``2 * draft_size``: Pillow's JPEG draft
            picks ``scale = min(w // rw, h // rh)`` rounded down to 8, 4, 2 or 1 for a request of
            ``(rw, rh)``, so requesting ``(2 * draft_size, 2 * draft_size)`` bounds the short side
            (Pillow docs, ``Image.draft``: "returns a version of the image that as closely as
            possible matches the given mode and size"; src/PIL/JpegImagePlugin.py ``draft``).
            For HEIF, pillow-heif's ``draft`` decodes an embedded thumbnail instead when one is a
            scaled copy at least that big. Whatever the format, a decoded image whose short side
            is still at least ``4 * draft_size`` is then box-reduced by the largest integer
            factor that keeps it at least ``2 * draft_size`` (``Image.reduce``; the two-step
            recipe of Pillow's ``reducing_gap=2.0`` in ``Image.thumbnail``): a 12 MP HEIC or PNG
            otherwise reaches the model's processor at full size, whose resize then costs about
            0.24 s against 0.006 s (measured here on a 3024x4032 image, Chinese-CLIP processor),
            and a HEIC decoded in a worker process crosses the pipe as 36 MB instead of 1 MB.
            ``None`` decodes at full resolution.
        max_pixels: refuse images with more than this many pixels (width x height), checked from
            the header before any pixel is decoded. ``None`` uses ``PIL.Image.MAX_IMAGE_PIXELS``
            (about 89.5 MP). A value above ``2 * Image.MAX_IMAGE_PIXELS`` cannot lift Pillow's own
            hard limit, which ``Image.open`` enforces; only changing that process-wide setting can.
        allow_truncated: decode what is there of a truncated file (the rest is filled by the
            decoder, grey for JPEG) and say so in ``note``, instead of raising. The retry sets
            Pillow's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES`` under a lock for the length
            of one decode, so a normal-path decode running at that moment in another thread would
            also accept a truncated file; use one value for a whole run.
        max_aspect_ratio: refuse images whose long side is more than this many times the short
            side, from the header before decoding (see ``MAX_ASPECT_RATIO``); ``None``: no limit.
        draft_keep: the JPEG / HEIF draft keeps the short side at least ``draft_keep *
            draft_size`` (2 above). 1 decodes straight to about the model's size, for a resize
            that does not need the margin (``ImagePreprocessor(fast=True)``): the DCT scaling is
            then 1/8 for a 12 MP photo at 224 px instead of 1/4 (measured in
            scripts/bench_decode.py). The box reduction keeps ``2 * draft_size`` either way.

    Returns:
        A ``DecodedImage``; ``image.mode == "RGB"``.

    Raises:
        ImageError: with ``category`` one of
            ``"not_found"`` (no such file),
            ``"link"`` (a broken symbolic link: its target does not exist, or a link loop),
            ``"not_a_file"`` (a directory, FIFO, socket or device),
            ``"permission"`` (not readable),
            ``"empty"`` (zero bytes),
            ``"unidentified"`` (not an image in a supported format, e.g. HTML saved as ``.jpg``),
            ``"truncated"`` (the file ends before the image data does),
            ``"too_large"`` (more pixels than allowed, or out of memory while decoding),
            ``"aspect_ratio"`` (long side over ``max_aspect_ratio`` times the short side),
            ``"decode"`` (anything else: corrupt data, unsupported mode, I/O error).
            Never any other exception.
    """
    path = Path(path)
    try:
        return _load(path, draft_size, max_pixels, allow_truncated, max_aspect_ratio, draft_keep)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError("too_large", "out of memory while decoding") from None
    except Image.DecompressionBombError as exc:
        # Pillow refuses from the header at twice its limit and names that doubled number; say
        # which limit the caller set instead (``--max-pixels 1000`` must not read "limit of 2000").
        limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
        found = re.search(r"\((\d+) pixels\)", str(exc))
        if found and limit and int(found.group(1)) > limit:
            raise ImageError("too_large", f"{found.group(1)} pixels exceeds the limit of {limit}") from None
        raise ImageError("too_large", str(exc)) from None
    except Exception as exc:  # the contract: every failure becomes an ImageError
        if _is_truncation(exc):
            raise ImageError("truncated", describe(exc, whole=True)) from None
        raise ImageError("decode", describe(exc, whole=True)) from None


def _load(path: Path, draft_size: int | None, max_pixels: int | None, allow_truncated: bool,
          max_aspect_ratio: float | None, draft_keep: int = 2) -> DecodedImage:
    """``load_image`` without its exception mapping: open, check the header, decode, upright, RGB."""
    notes: list[str] = []
    with _open_regular_file(path) as fp:
        im = _identify(fp)
        width, height = im.size
        _check_size(width, height, max_pixels, max_aspect_ratio)
        try:
            frames = int(getattr(im, "n_frames", 1))
        except Exception:  # counting frames walks the file; a broken later frame is not fatal
            frames = 1
        if draft_size and im.format in _DRAFT_FORMATS:
            im.draft("RGB", (draft_keep * draft_size, draft_keep * draft_size))
        try:
            im.load()  # force the full decode here, so a truncated file fails here and not later
        except Exception as exc:
            if not (allow_truncated and _is_truncation(exc)):
                raise
            im = _load_truncated(fp, draft_size and draft_keep * draft_size)
            notes.append("file is truncated; decoded the part that is there")

    im, swapped, note = pixels.upright(im)
    if note:
        notes.append(note)
    if swapped:
        width, height = height, width
    rgb = pixels.to_rgb(im)
    if draft_size:
        rgb = pixels.reduce_for(rgb, draft_size)
    return DecodedImage(rgb, width, height, frames, "; ".join(notes) or None)


def _check_size(width: int, height: int, max_pixels: int | None, max_aspect_ratio: float | None) -> None:
    """Refuse, from the header, images over the pixel limit or the aspect-ratio limit.

    Raises:
        ImageError: ``too_large`` or ``aspect_ratio``.
    """
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if limit is not None and width * height > limit:
        raise ImageError("too_large", f"{width}x{height} = {width * height} pixels exceeds the limit of {limit}")
    short, long = sorted((width, height))
    if max_aspect_ratio is not None and short > 0 and long / short > max_aspect_ratio:
        raise ImageError(
            "aspect_ratio",
            f"{width}x{height}: aspect ratio {long / short:.4g}:1 is over the limit of {max_aspect_ratio:g}:1",
        )


@contextmanager
def _open_regular_file(path: Path) -> Iterator[BinaryIO]:
    """Open ``path`` read-only without blocking and yield a binary file object; close it after.

    ``O_NONBLOCK`` keeps ``open()`` of a FIFO from waiting for a writer; the type check uses
    ``fstat`` of the descriptor actually opened, so nothing can be swapped in between a ``stat``
    and the ``open``. For regular files ``O_NONBLOCK`` has no effect on reads.

    Raises:
        ImageError: ``not_found``, ``link`` (dangling symlink, or ``ELOOP``: a link loop),
            ``permission``, ``not_a_file``, ``empty``, or ``decode`` for other ``open``
            failures (``ENAMETOOLONG``...).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            raise ImageError("link", f"broken symbolic link: its target {_link_target(path)} does not exist") from None
        raise ImageError("not_found", "no such file") from None
    except IsADirectoryError:
        raise ImageError("not_a_file", "is a directory") from None
    except PermissionError:
        if os.path.isdir(path):  # Windows refuses to open folders with EACCES
            raise ImageError("not_a_file", "is a directory") from None
        raise ImageError("permission", "permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError("link", "symbolic link loop (too many levels of symbolic links)") from None
        raise ImageError("decode", f"cannot open: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise ImageError("not_a_file", f"is {kind}")
        if st.st_size == 0:
            raise ImageError("empty", "file is empty (0 bytes)")
        fp = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fp:
        yield fp


def _link_target(path: Path) -> str:
    """What the symlink ``path`` points to, quoted, as stored in the link (``readlink``)."""
    try:
        return repr(os.readlink(path))
    except OSError:
        return "(unreadable)"


def read_head(path: Path, size: int = 16) -> bytes:
    """The first ``size`` bytes of the regular file ``path`` (fewer if it is shorter), or ``b""``
    when it cannot be opened or is not a regular file (FIFOs are never waited on). For sniffing
    the format before choosing how to decode; ``load_image`` reports what is wrong with the file."""
    try:
        with _open_regular_file(Path(path)) as fp:
            return fp.read(size)
    except (ImageError, OSError):
        return b""


def _identify(fp) -> ImageFile.ImageFile:
    """``Image.open`` restricted to ``SUPPORTED_FORMATS``; reads the header only."""
    try:
        return Image.open(fp, formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        raise ImageError(
            "unidentified", f"not a supported image (tried {', '.join(SUPPORTED_FORMATS)})"
        ) from None


def _load_truncated(fp, draft_side: int | None) -> ImageFile.ImageFile:
    """Re-open and decode a truncated file with Pillow's ``LOAD_TRUNCATED_IMAGES`` set (drafted to
    keep the short side >= ``draft_side`` px)."""
    fp.seek(0)
    im = _identify(fp)
    if draft_side and im.format in _DRAFT_FORMATS:
        im.draft("RGB", (draft_side, draft_side))
    with _TRUNCATED_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            im.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous
    return im


def _is_truncation(exc: BaseException) -> bool:
    """True for Pillow's "image file is truncated" family of errors (JPEG, PNG, GIF, TIFF)."""
    return isinstance(exc, (OSError, SyntaxError, EOFError)) and "truncated" in str(exc).lower()

