"""Content hashes of files: BLAKE3 of the bytes, and the ``(resolved path, size, mtime_ns)`` facts
that let an unchanged file skip the read.

BLAKE3 (the ``blake3`` package: Python bindings of the reference Rust crate, github.com/BLAKE3-team/
BLAKE3) hashes at several GB/s per core with SIMD, far above the rate a disk delivers photos, and is
a cryptographic hash, so two different files never share a key in practice: an embedding store
keyed by it never serves one photo's embedding for another. A key is its 256-bit digest in hex.
"""

from __future__ import annotations

import os
from pathlib import Path

import blake3

#: Bytes read per ``update`` when hashing a file as a stream.
CHUNK_BYTES = 1 << 20


def file_facts(path: Path | str) -> tuple[bytes, int, int]:
    """What the path index stores for ``path``: when all three match, its bytes are the same.

    Returns:
        ``(resolved path, size, mtime_ns)``: the path with symlinks followed, absolute, as
        ``os.fsencode`` bytes (names that are not valid UTF-8 are kept exactly); the size in
        bytes; the modification time in nanoseconds (``os.stat_result.st_mtime_ns``).

    Raises:
        OSError: the file cannot be reached or is not a regular file.
    """
    try:
        resolved = Path(path).resolve()
    except RuntimeError as exc:  # a symlink loop (Python < 3.13 raises RuntimeError for it)
        raise OSError(str(exc)) from None
    st = resolved.stat()
    if not os.path.isfile(resolved):
        raise OSError(f"not a regular file: {resolved}")
    return os.fsencode(resolved), st.st_size, st.st_mtime_ns


def content_hash(path: Path | str, *, threads: int = 1) -> str:
    """BLAKE3 digest (64 hex characters) of the file's bytes.

    Args:
        path: the file.
        threads: BLAKE3 threads for one file (``-1``: as many as the library sees fit, for large
            files such as model weights; 1 for photos, which the decode threads hash in parallel).

    Raises:
        OSError: the file cannot be read.
    """
    hasher = blake3.blake3(max_threads=threads if threads > 0 else blake3.blake3.AUTO)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def text_hash(text: str) -> str:
    """BLAKE3 digest (hex) of ``text`` as UTF-8 (surrogates escaped): names a model key's file."""
    return blake3.blake3(text.encode("utf-8", "surrogateescape")).hexdigest()
