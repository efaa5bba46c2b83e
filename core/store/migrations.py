"""The store file's schema as an ordered list of migrations, the shape of simonw/llm's
``migrations.py``.

``MIGRATIONS[i]`` takes a file from schema version ``i`` to ``i + 1``; ``PRAGMA user_version``
records how many have run (the file's schema version), so ``len(MIGRATIONS)`` is the version this
wwts writes. A new file runs them all, a file of an older wwts runs those it lacks, and a file of
a newer wwts (a version above ``len(MIGRATIONS)``) is refused by ``sqlite.connect``. ``migrate``
runs inside the caller's write transaction (``BEGIN IMMEDIATE``) and reads the version there, so
the steps and the version bump are committed together: a process killed mid-upgrade leaves the
file as it was, and of two processes upgrading at once the second, waiting for the write lock,
finds nothing left to do. Each step runs once per file.

To change the schema, append a function (``ALTER TABLE``, a new table, an index); never edit or
reorder one that has shipped, since users' files record how many ran.

Tables after version 1:

- ``meta(key, value)``: ``model_key`` (canonical JSON), ``model`` (display name), ``created``.
- ``images(hash, embedding, dim, width, height, frames, note, created)``: one row per distinct file
  content (BLAKE3 of the bytes); ``embedding`` is ``dim`` little-endian float32 values.
- ``paths(path, size, mtime_ns, hash, seen)``: the path index, so a file whose resolved path, size
  and mtime are unchanged is not even read again.
- ``texts(text, settings, label, embedding, dim, created)``: label prompt features.

Version 2 adds:

- ``captions(hash, settings, caption, width, height, frames, note, created)``: one caption per
  file content and generation settings (``--max-new-tokens``, beams, prompt...; canonical JSON) in
  a caption model's store file (``captions.CaptionStore``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable


def _tables(conn: sqlite3.Connection) -> None:
    """Version 1: the four tables and the path index's lookup by hash."""
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("CREATE TABLE IF NOT EXISTS images (hash TEXT PRIMARY KEY, embedding BLOB NOT NULL, "
                 "dim INTEGER NOT NULL, width INTEGER, height INTEGER, frames INTEGER, note TEXT, "
                 "created REAL NOT NULL)")
    conn.execute("CREATE TABLE IF NOT EXISTS paths (path BLOB PRIMARY KEY, size INTEGER NOT NULL, "
                 "mtime_ns INTEGER NOT NULL, hash TEXT NOT NULL, seen REAL NOT NULL)")
    conn.execute("CREATE INDEX IF NOT EXISTS paths_by_hash ON paths (hash)")
    conn.execute("CREATE TABLE IF NOT EXISTS texts (text TEXT NOT NULL, settings TEXT NOT NULL, label TEXT, "
                 "embedding BLOB NOT NULL, dim INTEGER NOT NULL, created REAL NOT NULL, "
                 "PRIMARY KEY (text, settings))")


def _captions(conn: sqlite3.Connection) -> None:
    """Version 2: the captions table, keyed by content hash and generation settings."""
    conn.execute("CREATE TABLE IF NOT EXISTS captions (hash TEXT NOT NULL, settings TEXT NOT NULL, "
                 "caption TEXT NOT NULL, width INTEGER, height INTEGER, frames INTEGER, note TEXT, "
                 "created REAL NOT NULL, PRIMARY KEY (hash, settings))")


#: The schema's steps, oldest first: ``MIGRATIONS[i]`` takes version ``i`` to ``i + 1``.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_tables, _captions]


def schema_version() -> int:
    """The schema version this wwts writes: ``len(MIGRATIONS)``."""
    return len(MIGRATIONS)


def file_version(conn: sqlite3.Connection) -> int:
    """The file's ``PRAGMA user_version``: how many migrations it has had."""
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Run the migrations the file lacks and record the new version, inside the caller's write
    transaction (the caller commits, or rolls back on an exception).

    Returns:
        The names of the steps that ran (``[]`` when the file was up to date, or newer).

    Raises:
        sqlite3.Error: a step failed (the transaction must be rolled back).
    """
    version = file_version(conn)
    ran = []
    for step in MIGRATIONS[version:]:
        step(conn)
        ran.append(step.__name__.lstrip("_"))
    if ran:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
    return ran
