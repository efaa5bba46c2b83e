"""``CaptionStore``: the captions of one caption model key, by content hash and generation settings.

A caption model's store file is an ordinary ``SqliteStore`` file (its model key: the weights'
identity, backend, dtype, quantization, image processor recipe); its ``captions`` table
(``migrations._captions``) holds one caption per ``(content hash, settings)``, where ``settings``
is canonical JSON of what changes the generated text (``--max-new-tokens``, ``--num-beams``,
``--prompt``...). So a second caption run over the same photos with the same settings generates
nothing, and another ``--max-new-tokens`` or beam setting computes (and keeps) its own captions.

The path index (``paths``) is the file's own, shared with embeddings: an unchanged file (resolved
path, size, mtime) is not even read again. Failures follow ``SqliteStore``'s rule: the first
``sqlite3.Error`` is logged in one line and the store stops for the run.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from .hashing import content_hash, file_facts
from .interface import StoredImage
from .sqlite import SqliteStore

_KNOWN = ("SELECT p.hash, c.caption, c.width, c.height, c.frames, c.note FROM paths p LEFT JOIN captions c "
          "ON c.hash = p.hash AND c.settings = ? WHERE p.path = ? AND p.size = ? AND p.mtime_ns = ?")
_BY_HASH = "SELECT hash, caption, width, height, frames, note FROM captions WHERE hash = ? AND settings = ?"


class CaptionStore:
    """Captions by content hash for one set of generation settings, in a ``SqliteStore`` file.

    Args:
        store: the caption model key's store file.
        settings: canonical JSON of the generation settings (part of every row's key).
    """

    def __init__(self, store: SqliteStore, settings: str) -> None:
        self.store = store
        self.settings = settings
        self._facts: dict[str, tuple] = {}

    @property
    def path(self) -> Path:
        """The ``.sqlite`` file."""
        return self.store.path

    def lookup(self, path: Path | str) -> tuple[str | None, StoredImage | None]:
        """The content hash of the file at ``path`` and, when its caption under these settings is
        stored, a ``StoredImage`` with ``caption`` set. The bytes are read only when the path index
        does not know the file as it is now; ``(None, None)`` for an unreadable file or a failed store."""
        try:
            facts = file_facts(path)
        except OSError:
            return None, None
        row = self.store._query(_KNOWN, (self.settings, *facts))
        if row is None:
            try:
                key = content_hash(path)
                unchanged = file_facts(path) == facts
            except OSError:
                return None, None
            if unchanged:  # a file rewritten while it was read keeps no index row
                with self.store._lock:
                    self.store._pending_paths.append((*facts, key, time.time()))
            row = self.store._query(_BY_HASH, (key, self.settings)) or (key, None, None, None, None, None)
        key, caption, width, height, frames, note = row
        if caption is None or not width or not height:
            return key, None
        return key, StoredImage(key, None, int(width), int(height), int(frames or 1), note, caption=caption)

    def holds(self, paths: Sequence[Path]) -> bool:
        """Whether every one of ``paths`` has its caption stored, by the path index alone (no file
        is read): a run over them needs no model."""
        for path in paths:
            try:
                facts = file_facts(path)
            except OSError:
                return False
            row = self.store._query(_KNOWN, (self.settings, *facts))
            if row is None or row[1] is None:
                return False
        return True

    def remember(self, key: str, width: int, height: int, frames: int = 1, note: str | None = None) -> None:
        """The record facts of image ``key``, written with its caption at the next ``put``."""
        with self.store._lock:
            self._facts[key] = (width, height, frames, note)

    def put(self, captions: Mapping[str, str]) -> None:
        """Store each ``content hash → caption`` (with the facts ``remember`` gave and the path-index
        rows ``lookup`` gathered) in one transaction."""
        now = time.time()
        with self.store._lock:
            rows = [(key, self.settings, text, *self._facts.pop(key, (None, None, None, None)), now)
                    for key, text in captions.items()]
            self._write(rows)

    def flush(self) -> None:
        """Write the path-index rows gathered so far."""
        with self.store._lock:
            self._write([])

    def _write(self, rows: list[tuple]) -> None:
        store = self.store
        paths, store._pending_paths = store._pending_paths, []
        if not (rows or paths) or store.failed:
            return
        try:
            store._conn.execute("BEGIN IMMEDIATE")
            try:
                store._conn.executemany("INSERT OR REPLACE INTO captions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                store._conn.executemany("INSERT OR REPLACE INTO paths VALUES (?, ?, ?, ?, ?)", paths)
                store._conn.execute("COMMIT")
            except BaseException:
                store._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            store._fail(exc)

    def count(self) -> int:
        """Captions stored under these settings."""
        row = self.store._query("SELECT COUNT(*) FROM captions WHERE settings = ?", (self.settings,))
        return int(row[0]) if row else 0

    def __repr__(self) -> str:
        return f"CaptionStore({str(self.path)!r})"


def caption_settings(values: Mapping[str, Any]) -> str:
    """Canonical JSON of generation settings (sorted keys): a ``CaptionStore``'s ``settings``."""
    return json.dumps(dict(values), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
