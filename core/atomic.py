"""Durable file operations: atomic replace (temporary file + fsync + ``os.replace``) and
cutting a file back to a known-good size.

Every file wwts writes whole goes through ``atomic_file`` / ``atomic_write``: result files,
run settings, locks' details, reports, thumbnails, XMP sidecars, the store's weights index, the
bf16 calibration cache, Parquet exports and the backends' conversions. Appended logs (JSONL
outputs, the sort undo log) are made durable line by line by their writers instead."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where directories cannot be opened."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path, *, sync: bool = True) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` when the ``with`` block ends without an exception.

    The data goes to a hidden temporary file next to ``path`` (``.NAME.XXXXXXXX.tmp``, mode 0o666
    minus the umask, like a plain ``open``), which is flushed, fsync-ed and put over ``path`` with
    ``os.replace``, then the folder is fsync-ed: ``path`` is either its old self or complete,
    whatever stops the process. When the block raises, the temporary file is removed and ``path``
    is left as it was. ``sync=False`` skips the two fsyncs, for a cache whose entries are made
    again when lost (thumbnails): a reader still never sees a half-written file. For a writer
    whose data comes over several calls (the Parquet export), hold it in a ``contextlib.ExitStack``.

    Raises:
        OSError: creating, writing or replacing failed (the block's own exception passes through).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, "wb") as fh:
            yield fh
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync:
        fsync_dir(path.parent)


def atomic_write(path: Path, chunks: Iterable[bytes], *, sync: bool = True) -> None:
    """Write ``chunks`` (bytes, in order) as the new content of ``path`` through ``atomic_file``
    (``sync`` as there): on any failure ``path`` is left as it was. Text goes in as
    ``[text.encode("utf-8")]``.

    Raises:
        OSError: writing or replacing failed.
    """
    with atomic_file(path, sync=sync) as fh:
        for chunk in chunks:
            fh.write(chunk)


def truncate(path: Path, size: int) -> None:
    """Cut ``path`` back to ``size`` bytes (a torn tail) and fsync it; untouched when it already
    has that size.

    Raises:
        OSError: the file cannot be opened or truncated.
    """
    if path.stat().st_size != size:
        with open(path, "r+b") as fh:
            fh.truncate(size)
            fh.flush()
            os.fsync(fh.fileno())
