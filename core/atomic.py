"""Durable file operations: atomic replace (temporary file + fsync + ``os.replace``) and
cutting a file back to a known-good size."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path


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


def atomic_write(path: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to a temporary file next to ``path``, fsync it, ``os.replace`` it over.

    The temporary file is created with mode 0o666 minus the umask, like a plain ``open``. On any
    failure it is removed and ``path`` is left as it was.

    Raises:
        OSError: writing or replacing failed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


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
