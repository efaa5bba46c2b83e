"""Small thumbnails for the report, made once and cached.

Each photo is decoded by wwts' own decoder (``core.input.load_image``: EXIF orientation applied,
HEIC through pillow-heif, JPEG DCT-scaled while decoding, pixel-bomb checks), shrunk with
``Image.thumbnail`` to ``size`` pixels on the long side and saved as a JPEG (quality 80, about
10 KB at 256 px). The file name is a digest of the photo's resolved path, modification time,
size in bytes and the thumbnail size, so a thumbnail is reused until the photo changes and a
changed photo gets a new one. Thumbnails are made on a thread pool (Pillow releases the GIL
while decoding and resizing).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..atomic import atomic_write
from ..errors import describe
from ..input import load_image

#: Long side of a thumbnail, in pixels (two columns of a 1080p screen's grid at 2x scale stay sharp).
THUMB_SIZE = 256
JPEG_QUALITY = 80


@dataclass(frozen=True)
class Thumb:
    """A thumbnail: ``file`` in the cache, its ``width`` x ``height``; or ``error`` (why none)."""

    file: Path | None
    width: int = 0
    height: int = 0
    error: str | None = None

    def data_uri(self) -> str:
        """The JPEG as a ``data:image/jpeg;base64,...`` URI (for a report in one file)."""
        return "data:image/jpeg;base64," + base64.b64encode(self.file.read_bytes()).decode("ascii")


def thumb_key(photo: Path, size: int = THUMB_SIZE) -> str | None:
    """The cache name of ``photo``'s thumbnail (20 hex digits of SHA-256 over path, mtime, size,
    thumbnail size), or ``None`` when the photo cannot be stat'ed."""
    try:
        resolved = Path(photo).resolve()
        st = resolved.stat()
    except (OSError, RuntimeError):
        return None
    text = f"{resolved}\0{st.st_mtime_ns}\0{st.st_size}\0{size}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def make_thumb(photo: Path, folder: Path, size: int = THUMB_SIZE) -> Thumb:
    """The thumbnail of ``photo`` in ``folder``, made unless the cache has it; never raises."""
    key = thumb_key(photo, size)
    if key is None:
        return Thumb(None, error="the photo is not there any more")
    target = folder / f"{key}.jpg"
    if target.is_file():
        try:
            with Image.open(target) as im:
                return Thumb(target, *im.size)
        except Exception:  # a damaged cache entry: make it again
            pass
    try:
        decoded = load_image(Path(photo), draft_size=max(size // 2, 1))
        image = decoded.image
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
        atomic_write(target, [buf.getvalue()], sync=False)  # a cache: made again if lost
        return Thumb(target, *image.size)
    except Exception as exc:
        return Thumb(None, error=describe(exc))


def make_thumbs(photos: Iterable[Path], folder: Path, size: int = THUMB_SIZE,
                workers: int | None = None) -> dict[str, Thumb]:
    """Thumbnails of ``photos`` (keys: ``str(photo)``) in ``folder`` (created), on ``workers`` threads.

    Raises:
        OSError: ``folder`` cannot be created.
    """
    folder.mkdir(parents=True, exist_ok=True)
    photos = list(dict.fromkeys(str(p) for p in photos))
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wwts-thumb") as pool:
        thumbs = pool.map(lambda p: make_thumb(Path(p), folder, size), photos)
        return dict(zip(photos, thumbs))


def prune(folder: Path, keep: Iterable[Path]) -> int:
    """Delete the thumbnails in ``folder`` that ``keep`` does not name (photos no longer in the
    report); only files named like a thumbnail are touched. Returns how many were deleted."""
    keep_names = {Path(k).name for k in keep}
    gone = 0
    for p in folder.glob("*.jpg"):
        if len(p.stem) == 20 and all(c in "0123456789abcdef" for c in p.stem) and p.name not in keep_names:
            p.unlink(missing_ok=True)
            gone += 1
    return gone
