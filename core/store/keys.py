"""Model keys: what must be equal for a stored embedding to be served, and the model's identity.

A ``ModelKey`` is canonical JSON of everything that changes an image's embedding: the model's
identity (hub id + the snapshot's commit, or a digest of a local folder's files), the dtype,
backend and quantization that computed it, the image processor's whole configuration (input size,
resize / crop / normalisation recipe) and wwts' own decode-recipe version. Each key gets its own
store file, named by a digest of that JSON, so a change in any part opens another file and a stale
embedding is never served.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from .hashing import content_hash, text_hash

#: ``…/models--ORG--NAME/snapshots/COMMIT``: a folder of the Hugging Face hub cache.
_SNAPSHOT_RE = re.compile(r"models--(?P<repo>[^/\\]+)[/\\]snapshots[/\\](?P<commit>[0-9a-f]{40})[/\\]?$")
#: Characters kept from a model name in a store file's name.
_SLUG_RE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ModelKey:
    """One model + preprocessing configuration.

    Attributes:
        name: the model as the user named it (for display only; not part of the identity).
        text: canonical JSON (sorted keys) of the parts that decide an embedding.
    """

    name: str
    text: str

    @property
    def digest(self) -> str:
        """First 20 hex characters (80 bits) of the BLAKE3 digest of ``text``."""
        return text_hash(self.text)[:20]

    @property
    def filename(self) -> str:
        """``chinese-clip-vit-base-patch16-<digest>.sqlite``."""
        slug = _SLUG_RE.sub("-", Path(self.name.rstrip("/\\")).name or "model").strip("-.")[:40] or "model"
        return f"{slug}-{self.digest}.sqlite"

    @property
    def parts(self) -> dict[str, Any]:
        """``text`` parsed back."""
        return json.loads(self.text)


def model_key(name: str, parts: dict[str, Any]) -> ModelKey:
    """The ``ModelKey`` of ``parts`` (JSON-ready; other values are written with ``str``)."""
    return ModelKey(name, json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":")))


def weights_identity(folder: Path | str, index_file: Path | None = None) -> dict[str, str]:
    """What identifies a model's weights.

    A folder of the hub cache (``…/models--ORG--NAME/snapshots/COMMIT``) is identified by the hub
    id and commit (the revision). Any other folder by a BLAKE3 digest over the names and content
    hashes of its files (hidden files and folders skipped); each file's hash is remembered in
    ``index_file`` by ``(path, size, mtime_ns)``, so an unchanged folder is hashed once.

    Raises:
        OSError: the folder cannot be read.
    """
    folder = Path(folder)
    found = _SNAPSHOT_RE.search(str(folder.resolve()))
    if found:
        return {"repo": found.group("repo").replace("--", "/"), "revision": found.group("commit")}
    index = _read_index(index_file)
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        st = path.stat()
        slot = f"{os.fsdecode(path.resolve())}|{st.st_size}|{st.st_mtime_ns}"
        if slot not in index:
            index[slot] = content_hash(path, threads=-1)
        lines.append(f"{rel.as_posix()} {index[slot]}")
    _write_index(index_file, index)
    return {"files": text_hash("\n".join(lines))}


def _read_index(index_file: Path | None) -> dict[str, str]:
    if index_file is None:
        return {}
    try:
        data = json.loads(index_file.read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_index(index_file: Path | None, index: dict[str, str]) -> None:
    """Replace ``index_file`` atomically (``atomic_write``); best effort."""
    if index_file is None:
        return
    try:
        index_file.parent.mkdir(parents=True, exist_ok=True)
        # ASCII: paths with lone surrogates are escaped, and read back the same
        atomic_write(index_file, [json.dumps(index).encode("ascii")])
    except OSError:
        pass
