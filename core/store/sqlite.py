"""``SqliteStore``: image embeddings and label text features of one model key, in one SQLite file.

SQLite (the standard library's ``sqlite3``) in WAL mode: readers never block the writer, two wwts
processes can use one file at once (writes are serialised by SQLite's lock, each waits up to
``BUSY_TIMEOUT_S``), and a process killed mid-write leaves the file as of its last committed
transaction (SQLite's atomic commit; https://www.sqlite.org/wal.html, https://www.sqlite.org/atomiccommit.html).
``synchronous=NORMAL`` is the WAL setting SQLite recommends: a power cut may lose the last
transactions, never corrupt the file. A file is marked as wwts' with ``PRAGMA application_id``
and carries its model key in ``meta``; anything else at that name is refused (``StoreFileError``).
The tables are made, and a file of an older wwts upgraded in place, by ``migrations`` (its
docstring lists them); a file of a newer wwts is refused.

Failures after the file opened never stop a run: the first ``sqlite3.Error`` is logged in one line
and the store stops (``failed``); a file found malformed then is set aside at once.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np

from ..arrays import as_numpy
from .interface import StoredImage, TextKey
from .hashing import content_hash, file_facts
from .keys import ModelKey
from .migrations import migrate, schema_version

log = logging.getLogger("wwts")

#: ``PRAGMA application_id`` of a wwts store: "wwts" in ASCII.
APPLICATION_ID = 0x77777473
#: Seconds a write waits for another process's transaction before giving up.
BUSY_TIMEOUT_S = 30.0
#: Most ``?`` parameters in one ``IN (...)`` query.
_CHUNK = 500


class StoreFileError(Exception):
    """A store file that cannot be used: ``kind`` is ``"corrupt"`` (not an SQLite database, or
    malformed), ``"foreign"`` (another program's database, or another model key's) or ``"newer"``
    (written by a newer wwts: left alone)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def _vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def connect(path: Path, key: ModelKey | None) -> tuple[sqlite3.Connection, str]:
    """Open (creating when missing or empty, upgrading when older) the store file at ``path`` in
    WAL mode.

    Args:
        path: the ``.sqlite`` file; its folder must exist.
        key: the model key the file must hold (``None``: any, for ``wwts store`` maintenance; a
            missing file is then not created and an older one not upgraded).

    Returns:
        The connection (autocommit: transactions are explicit) and the file's model key text.

    Raises:
        StoreFileError: see its kinds.
        sqlite3.OperationalError: the file cannot be opened or locked (permissions, busy).
    """
    conn = sqlite3.connect(os.fspath(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    try:
        try:
            # one read transaction: the header and the tables from the same moment (another process
            # creating the store commits both at once, in _upgrade)
            conn.execute("BEGIN")
            try:
                app, version = _header(conn)
                tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            finally:
                conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise StoreFileError("corrupt", f"not a readable SQLite database ({exc})") from None
        if app == 0 and not tables and key is not None:
            _upgrade(conn, key, new=True)
        else:
            _check_header(app, version)
            if version < schema_version() and key is not None:
                ran = _upgrade(conn, key, new=False)
                log.info("embedding store %s upgraded from schema %d to %d (%s)", path, version, schema_version(),
                         ", ".join(ran) or "by another process")
        row = conn.execute("SELECT value FROM meta WHERE key = 'model_key'").fetchone()
        if row is None or (key is not None and row[0] != key.text):
            raise StoreFileError("foreign", "made for another model key")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn, row[0]
    except BaseException:
        conn.close()
        raise


def _header(conn: sqlite3.Connection) -> tuple[int, int]:
    """``(PRAGMA application_id, PRAGMA user_version)`` of the open file."""
    return tuple(conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ("application_id", "user_version"))


def _check_header(app: int, version: int) -> None:
    """Raises ``StoreFileError``: ``"foreign"`` when ``app`` is not wwts', ``"newer"`` when the
    schema ``version`` is above ``migrations.schema_version()``."""
    if app != APPLICATION_ID:
        raise StoreFileError("foreign", "an SQLite database that wwts did not write")
    if version > schema_version():
        raise StoreFileError("newer", f"written by a newer wwts (schema {version}, this one reads {schema_version()})")


def _upgrade(conn: sqlite3.Connection, key: ModelKey, *, new: bool) -> list[str]:
    """Run the migrations the file lacks (``migrations.migrate``) in one write transaction; a
    ``new`` (empty) file also gets wwts' ``application_id`` and the model key in the same
    transaction, so another process opening it at the same moment waits, then finds it whole.

    Returns:
        The names of the migrations that ran (``[]``: another process had run them).

    Raises:
        StoreFileError: another program (``"foreign"``) or a newer wwts (``"newer"``) made the
            empty file meanwhile.
        sqlite3.Error: a migration failed (the file is left as it was).
    """
    if new:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before the first table; prune gives pages back
    conn.execute("BEGIN IMMEDIATE")
    try:
        app, version = _header(conn)  # again, under the write lock: another process may have been first
        if app or not new:
            _check_header(app, version)
        ran = migrate(conn)
        if new:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            meta = {"model_key": key.text, "model": key.name, "created": repr(time.time())}
            conn.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", meta.items())
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return ran


class SqliteStore:
    """The embedding store of one model key (an ``EmbeddingStore``), safe to use from several
    threads (one connection behind a lock) and several processes (SQLite's locking).

    Keys: a content hash (``str``) for an image, a ``TextKey`` for a label prompt. Writes are made
    in one transaction per ``put``, together with the path-index rows gathered by ``lookup``.

    Attributes:
        path: the ``.sqlite`` file.
        key_text: the model key the file holds (canonical JSON).
        failed: ``None``, or why the store stopped during this run (it then finds and keeps nothing).
        on_corrupt: called with ``(path, reason)`` when the file proves malformed mid-run (the
            opener sets it aside).
    """

    def __init__(self, path: Path, key: ModelKey | None) -> None:
        """Raises ``StoreFileError`` / ``sqlite3.OperationalError`` as ``connect`` does."""
        self.path = Path(path)
        self._conn, self.key_text = connect(self.path, key)
        self._lock = threading.RLock()
        self._pending_paths: list[tuple] = []
        self._facts: dict[str, tuple] = {}
        self.failed: str | None = None
        self.on_corrupt: Callable[[Path, str], None] | None = None

    # -- lookups ---------------------------------------------------------------------------------

    def lookup(self, path: Path | str) -> tuple[str | None, StoredImage | None]:
        """The content hash of the file at ``path`` and, when the store holds its embedding, the
        ``StoredImage``. The bytes are read (and hashed) only when the path index has no row for
        the file's resolved path, size and mtime. ``(None, None)`` for a file that cannot be read
        (its decoding will report why) or a store that failed."""
        try:
            facts = file_facts(path)
        except OSError:
            return None, None
        sql = ("SELECT p.hash, i.embedding, i.width, i.height, i.frames, i.note FROM paths p LEFT JOIN images i "
               "ON i.hash = p.hash WHERE p.path = ? AND p.size = ? AND p.mtime_ns = ?")
        row = self._query(sql, facts)
        if row is None:
            try:
                key = content_hash(path)
                unchanged = file_facts(path) == facts
            except OSError:
                return None, None
            if unchanged:  # a file rewritten while it was read keeps no index row
                with self._lock:
                    self._pending_paths.append((*facts, key, time.time()))
            row = self._query("SELECT hash, embedding, width, height, frames, note FROM images WHERE hash = ?", (key,))
            if row is None:
                return key, None
        key, blob, width, height, frames, note = row
        if blob is None or not width or not height:
            return key, None
        return key, StoredImage(key, _vector(blob), int(width), int(height), int(frames or 1), note)

    def indexed(self, path: Path | str) -> bool:
        """Whether the store holds the embedding of the file at ``path`` as it is now, by the path
        index alone (resolved path, size, mtime_ns): the file is never read. ``False`` for a file
        the index does not know (new, changed or touched: ``lookup`` would hash it), one that
        cannot be reached, or a store that failed."""
        try:
            facts = file_facts(path)
        except OSError:
            return False
        sql = ("SELECT 1 FROM paths p JOIN images i ON i.hash = p.hash WHERE p.path = ? AND p.size = ? "
               "AND p.mtime_ns = ? AND i.embedding IS NOT NULL")
        return self._query(sql, facts) is not None

    def remember(self, key: str, width: int, height: int, frames: int = 1, note: str | None = None) -> None:
        """The record facts of image ``key``, written with its embedding at the next ``put``."""
        with self._lock:
            self._facts[key] = (width, height, frames, note)

    def get(self, keys: Sequence[Hashable]) -> dict[Hashable, np.ndarray]:
        """The stored ``(D,)`` float32 vectors of those ``keys`` the store holds."""
        found: dict[Hashable, np.ndarray] = {}
        hashes = [k for k in dict.fromkeys(keys) if isinstance(k, str)]
        for i in range(0, len(hashes), _CHUNK):
            part = hashes[i:i + _CHUNK]
            sql = f"SELECT hash, embedding FROM images WHERE hash IN ({','.join('?' * len(part))})"
            found.update((h, _vector(blob)) for h, blob in self._query(sql, part, many=True) or [])
        for key in dict.fromkeys(k for k in keys if isinstance(k, TextKey)):
            row = self._query("SELECT embedding FROM texts WHERE text = ? AND settings = ?", (key.text, key.settings))
            if row is not None:
                found[key] = _vector(row[0])
        return found

    # -- writes ----------------------------------------------------------------------------------

    def put(self, items: Mapping[Hashable, Any]) -> None:
        """Store each ``key → (D,)`` vector (non-finite vectors are never stored), with the facts
        ``remember`` gave and the path-index rows ``lookup`` gathered, in one transaction."""
        now = time.time()
        images, texts = [], []
        with self._lock:
            for key, vector in items.items():
                vector = as_numpy(vector).reshape(-1)
                if not bool(np.isfinite(vector).all()):
                    continue
                if isinstance(key, TextKey):
                    texts.append((key.text, key.settings, key.label, _blob(vector), vector.size, now))
                elif isinstance(key, str):
                    facts = self._facts.pop(key, (None, None, None, None))
                    images.append((key, _blob(vector), vector.size, *facts, now))
            self._write(images, texts)

    def flush(self) -> None:
        """Write the path-index rows gathered so far."""
        with self._lock:
            self._write([], [])

    def _write(self, images: list[tuple], texts: list[tuple]) -> None:
        paths, self._pending_paths = self._pending_paths, []
        if not (images or texts or paths) or self.failed:
            return
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)", images)
                self._conn.executemany("INSERT OR REPLACE INTO texts VALUES (?, ?, ?, ?, ?, ?)", texts)
                self._conn.executemany("INSERT OR REPLACE INTO paths VALUES (?, ?, ?, ?, ?)", paths)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._fail(exc)

    def _query(self, sql: str, params: Sequence[Any], *, many: bool = False) -> Any:
        if self.failed:
            return None
        try:
            with self._lock:
                cursor = self._conn.execute(sql, params)
                return cursor.fetchall() if many else cursor.fetchone()
        except sqlite3.Error as exc:
            self._fail(exc)
            return None

    def _fail(self, exc: sqlite3.Error) -> None:
        """Stop using the store for the rest of this run, in one line; a malformed file is set aside."""
        if self.failed:
            return
        self.failed = f"{type(exc).__name__}: {exc}"
        corrupt = type(exc) is sqlite3.DatabaseError  # "malformed", "not a database"; not busy / disk full
        log.warning("embedding store %s failed (%s); the run goes on without it", self.path, self.failed)
        if corrupt and self.on_corrupt is not None:
            self.on_corrupt(self.path, self.failed)

    # -- maintenance -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """``{"photos", "paths", "texts", "dim", "oldest", "newest", "model"}`` (times: Unix seconds)."""
        with self._lock:
            photos, dim, oldest, newest = self._conn.execute(
                "SELECT COUNT(*), MAX(dim), MIN(created), MAX(created) FROM images").fetchone()
            paths = self._conn.execute("SELECT COUNT(*) FROM paths").fetchone()[0]
            texts = self._conn.execute("SELECT COUNT(*) FROM texts").fetchone()[0]
            model = self._conn.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
        return {"photos": photos, "paths": paths, "texts": texts, "dim": dim, "oldest": oldest, "newest": newest,
                "model": model[0] if model else None}

    def prune(self) -> tuple[int, int]:
        """Forget paths whose file is gone or changed (size or mtime), then the embeddings no path
        leads to; give the freed pages back to the file system.

        Returns:
            ``(paths removed, photos removed)``.
        """
        with self._lock:
            rows = self._conn.execute("SELECT path, size, mtime_ns FROM paths").fetchall()
            gone = [(p,) for p, size, mtime in rows if not _same_file(p, size, mtime)]
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("DELETE FROM paths WHERE path = ?", gone)
                photos = self._conn.execute("DELETE FROM images WHERE hash NOT IN (SELECT hash FROM paths)").rowcount
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("PRAGMA incremental_vacuum")
        return len(gone), photos

    def close(self) -> None:
        """Write what is pending and close the connection (safe to call twice)."""
        with self._lock:
            if self._conn is None:
                return
            self._write([], [])
            self._conn.close()
            self._conn = None

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"


def _same_file(path: bytes, size: int, mtime_ns: int) -> bool:
    try:
        st = os.stat(os.fsdecode(path))
    except OSError:
        return False
    return st.st_size == size and st.st_mtime_ns == mtime_ns
