"""The engine's side of the embedding store: give a task its store, look images up before they are
decoded, and hand the store the facts of the images that were decoded.

An image whose embedding the store holds is never decoded and never reaches the image tower: the
decode pool's ``lookup`` (run on the decode threads, where the file is hashed when the path index
does not know it) returns a ``Sample`` whose ``inputs`` is a ``core.store.StoredEmbedding`` and
whose ``decoded`` holds the stored width, height, frames and note, so the record is the one a
fresh run writes, with ``cached`` true. A stored image is served only when this run would have
accepted the file: within ``--max-pixels`` (or Pillow's limit), and not decoded from a truncated
file unless ``--allow-truncated``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from .. import models
from ..config import RunConfig
from ..errors import ImageError
from ..input import DecodedImage, Sample
from ..store import StoredImage, StoreOpener, content_hash, default_store_dir
from ..tasks import Task

log = logging.getLogger("wwts")

#: The decoder's note for a file decoded with ``--allow-truncated`` (``core.input.decode``).
_TRUNCATED_NOTE = "file is truncated"

Lookup = Callable[[Path], tuple[Any, Sample | None]]


def attach_store(task: Task, config: RunConfig) -> None:
    """Give ``task`` a ``StoreOpener`` when the run uses the store (``config.store``) and the task
    can use one (it has a ``store_opener`` attribute: the dual-encoder tasks); the task opens the
    store of its model key in ``setup``. Call before ``task.to``."""
    if config.store and hasattr(task, "store_opener"):
        folder = Path(config.store_dir) if config.store_dir else default_store_dir()
        task.store_opener = StoreOpener(folder, models.model_for("classify", config.lang, config.model))


def store_path(task: Task) -> str | None:
    """The file of the store the task uses now, or ``None`` (no store, or ``--no-store``)."""
    path = getattr(getattr(task, "store", None), "path", None)
    return str(path) if path is not None else None


def _usable(found: StoredImage, config: RunConfig) -> bool:
    """Would this run have accepted the file? (pixel limit; truncated files only when allowed)"""
    limit = Image.MAX_IMAGE_PIXELS if config.max_pixels is None else config.max_pixels
    if limit is not None and found.width * found.height > limit:
        return False
    return config.allow_truncated or _TRUNCATED_NOTE not in (found.note or "")


def store_lookup(task: Task, config: RunConfig) -> Lookup | None:
    """The decode pool's ``lookup`` for this run: with a store, ``path → (content hash, Sample of
    the stored embedding or None)``; for ``wwts embed`` without a store, the content hash alone
    (its rows carry it); else ``None`` (nothing is hashed)."""
    if hasattr(getattr(task, "store", None), "lookup"):
        def lookup(path: Path) -> tuple[Any, Sample | None]:
            try:  # the task's store now (its dtype may change mid-run)
                key, found = task.store.lookup(path)
            except Exception as exc:  # never fail an image for the store's sake: decode it
                log.debug("store lookup of %s failed: %s", path, exc)
                return None, None
            if found is None or not _usable(found, config):
                return key, None
            decoded = DecodedImage(None, found.width, found.height, found.frames, found.note)
            return key, Sample(decoded, found.stored(), key, cached=True)
        return lookup
    if config.head == "embed":
        def hash_only(path: Path) -> tuple[Any, Sample | None]:
            try:
                return content_hash(path), None
            except OSError:
                return None, None  # decoding says why
        return hash_only
    return None


def remember_decoded(task: Task, items: Sequence[tuple[Any, Sample | ImageError]]) -> None:
    """Tell the task's store the width, height, frames and note of each decoded image with a key,
    so they are stored with its embedding (a later run's record needs them without decoding)."""
    remember = getattr(getattr(task, "store", None), "remember", None)
    if remember is None:
        return
    for _, item in items:
        if isinstance(item, Sample) and item.key is not None and not item.cached:
            d = item.decoded
            remember(item.key, d.width, d.height, d.frames, d.note)


def flush_store(task: Task) -> None:
    """Write what the task's store holds pending (path-index rows); at the end of a run."""
    flush = getattr(getattr(task, "store", None), "flush", None)
    if flush is not None:
        flush()
