"""Where store files live, opening one for a model key, and what ``wwts store`` does with them.

The store folder is ``platformdirs.user_cache_dir("wwts")/embeddings`` (Linux: ``~/.cache/wwts/
embeddings``, honouring ``XDG_CACHE_HOME``; macOS: ``~/Library/Caches/wwts/embeddings``; Windows:
``%LOCALAPPDATA%\\wwts\\Cache\\embeddings``), or the folder given with ``--store``. It holds one
``NAME-DIGEST.sqlite`` file per model key (see ``keys``) and ``weights-index.json`` (content hashes
of local model folders' files by path, size and mtime).

A file that cannot be used (corrupt, another program's, another model key's) is reported in one
line and set aside: renamed ``FILE.corrupt-YYYYmmdd-HHMMSS`` (or ``.foreign-...``, with its
``-wal`` / ``-shm`` files), and a new file is started; the run goes on. A file written by a newer
wwts is left as it is and the run goes on without a store.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir

from .interface import EmbeddingStore, NullStore
from .keys import ModelKey, model_key, weights_identity
from .sqlite import SqliteStore, StoreFileError

log = logging.getLogger("wwts")

#: Suffixes SQLite gives the files that belong with a database in WAL mode.
_SIDE_FILES = ("-wal", "-shm")


def default_store_dir() -> Path:
    """``user_cache_dir("wwts")/embeddings`` (see the module docstring)."""
    return Path(user_cache_dir("wwts", appauthor=False)) / "embeddings"


def set_aside(path: Path, kind: str) -> Path | None:
    """Rename ``path`` (and its ``-wal`` / ``-shm`` files) to ``PATH.KIND-STAMP``; the new name, or
    ``None`` when it could not be renamed (gone already: another process set it aside)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.{kind}-{stamp}")
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None
    for side in _SIDE_FILES:
        try:
            os.replace(path.with_name(path.name + side), target.with_name(target.name + side))
        except OSError:
            pass
    return target


def open_store(folder: Path, key: ModelKey) -> EmbeddingStore:
    """The ``SqliteStore`` of ``key`` in ``folder`` (created when missing). A corrupt or foreign
    file is set aside in one warning line and a new one started; when no store can be opened
    (a newer wwts' file, a folder that cannot be written) the warning says so and a ``NullStore``
    is returned: the run goes on, computing every embedding."""
    path = folder / key.filename
    for attempt in range(2):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            store = SqliteStore(path, key)
            store.on_corrupt = _set_aside_mid_run
            return store
        except StoreFileError as exc:
            if exc.kind == "newer" or attempt:
                log.warning("embedding store %s not used: %s; this run computes every embedding", path, exc)
                return NullStore()
            moved = set_aside(path, exc.kind)
            log.warning("embedding store %s is %s (%s): set aside as %s; starting a new one", path,
                        "corrupt" if exc.kind == "corrupt" else "not a wwts store for this model", exc,
                        moved.name if moved else "(already moved)")
        except (OSError, sqlite3.Error) as exc:
            log.warning("embedding store %s cannot be opened (%s); this run computes every embedding", path, exc)
            return NullStore()
    return NullStore()


def _set_aside_mid_run(path: Path, reason: str) -> None:
    moved = set_aside(path, "corrupt")
    if moved is not None:
        log.warning("embedding store %s set aside as %s; the next run starts a new one", path, moved.name)


class StoreOpener:
    """Opens the store of a task's current model key; a task asks again after each move to
    another device or dtype (the key changes with the dtype).

    Args:
        folder: the store folder (``default_store_dir()`` or ``--store``); ``None``: keys only
            (``key_for``), nothing is opened or written.
        name: the model as the user named it (display name in ``wwts store info``).
    """

    def __init__(self, folder: Path | None, name: str) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.name = name
        self._identity: dict[str, Any] = {}
        self._stores: dict[str, EmbeddingStore] = {}

    def key_for(self, model_folder: Path | str | None, parts: dict[str, Any]) -> ModelKey | None:
        """The ``ModelKey`` of ``parts`` (the task's preprocessing, dtype, backend...) plus the
        identity of the weights in ``model_folder`` (``keys.weights_identity``); ``None`` (with one
        warning) when the weights cannot be identified."""
        folder_key = os.fspath(model_folder) if model_folder else ""
        if folder_key not in self._identity:
            index = self.folder / "weights-index.json" if self.folder is not None else None
            try:
                if not model_folder or not Path(model_folder).is_dir():
                    raise OSError(f"no model folder to identify ({model_folder!r})")
                self._identity[folder_key] = weights_identity(model_folder, index)
            except OSError as exc:
                log.warning("embedding store not used: the model's weights cannot be identified (%s)", exc)
                self._identity[folder_key] = None
        identity = self._identity[folder_key]
        return None if identity is None else model_key(self.name, {**parts, "weights": identity})

    def open(self, model_folder: Path | str | None, parts: dict[str, Any]) -> EmbeddingStore:
        """The store of ``key_for(model_folder, parts)``; a ``NullStore`` when the weights cannot be
        identified (never a store that might hold another model's embeddings) or the opener has
        no folder."""
        key = self.key_for(model_folder, parts)
        if key is None or self.folder is None:
            return NullStore()
        if key.text not in self._stores:
            self._stores[key.text] = open_store(self.folder, key)
        return self._stores[key.text]

    def close(self) -> None:
        """Close every store opened (pending writes are written)."""
        for store in self._stores.values():
            close = getattr(store, "close", None)
            if close is not None:
                close()
        self._stores.clear()


def store_files(folder: Path) -> list[dict[str, Any]]:
    """Every ``*.sqlite`` file in ``folder``, read without changing it (set-aside files not
    included), as ``wwts store info`` shows it.

    Returns:
        One dict per file: ``path``; ``bytes``, its size with its ``-wal`` file; ``stats``,
        ``SqliteStore.stats()`` (``None`` when unreadable); ``problem``, why it is unreadable
        (else ``None``); ``key``, its model key's parts (``None`` when unreadable).
    """
    out = []
    for path in sorted(folder.glob("*.sqlite")) if folder.is_dir() else []:
        size = sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
        entry = {"path": path, "bytes": size, "stats": None, "problem": None, "key": None}
        try:
            store = SqliteStore(path, None)
        except (StoreFileError, sqlite3.Error) as exc:
            entry["problem"] = str(exc)
        else:
            try:
                entry["stats"], entry["key"] = store.stats(), ModelKey("", store.key_text).parts
            finally:
                store.close()
        out.append(entry)
    return out


def prune_stores(folder: Path) -> tuple[int, int]:
    """``SqliteStore.prune`` on every readable store file of ``folder``: ``(paths, photos)`` removed."""
    paths = photos = 0
    for entry in store_files(folder):
        if entry["problem"] is None:
            store = SqliteStore(entry["path"], None)
            try:
                removed = store.prune()
            finally:
                store.close()
            paths, photos = paths + removed[0], photos + removed[1]
    return paths, photos


def clear_stores(folder: Path) -> tuple[int, int]:
    """Delete every store file of ``folder`` (with ``-wal`` / ``-shm`` files, set-aside files and the
    weights index). Returns ``(files removed, bytes freed)``."""
    count = freed = 0
    if not folder.is_dir():
        return 0, 0
    for path in sorted(folder.iterdir()):
        if path.is_file() and (".sqlite" in path.name or path.name == "weights-index.json"):
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            count, freed = count + 1, freed + size
    return count, freed
