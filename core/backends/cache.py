"""The conversion cache: exported and quantized towers saved once in the user cache, verified on
every load, rebuilt (never served) when corrupt or stale.

Layout: ``platformdirs.user_cache_dir("wwts")/conversions/<backend>/<model>-<tower>-<key>/``
(``$XDG_CACHE_HOME/wwts/...`` on Linux), one folder per conversion holding the backend's files and
``manifest.json`` (what the key was made of, each file's size, modification time and SHA-256, the
seconds the conversion took). The key is a SHA-256 of the model's identity (its folder, the name, size and
modification time of every config and weight file, which is the revision for a hub snapshot: its
files are links to blobs named by their content hash), the tower, the backend and its version, the
precision and the input size. A changed model therefore gets a new key and the old conversion is
never served.

A folder is written under a temporary name and renamed into place (``os.replace``): a crash
mid-conversion leaves no half-written entry under a real name. ``load_entry`` checks the
manifest and every file's size before the backend sees them, and the SHA-256 of every file whose
modification time is not the one recorded (so an untouched conversion is not re-read on every
run, and any rewrite is); a mismatch removes the folder and the caller converts again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from platformdirs import user_cache_dir

log = logging.getLogger(__name__)

#: Version of the folder layout and of the export recipe; bumping it makes every old entry stale.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: Files of a model folder that define its weights and behaviour (the fingerprint's inputs).
_MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".pt", ".pth", ".model", ".txt")


def cache_root() -> Path:
    """``user_cache_dir("wwts")/conversions``, read at each call (so ``XDG_CACHE_HOME`` is honoured)."""
    return Path(user_cache_dir("wwts", appauthor=False)) / "conversions"


def compiled_dir() -> Path:
    """OpenVINO's compiled-blob cache (its ``CACHE_DIR`` property): ``conversions/openvino-compiled``.
    OpenVINO keys and checks the blobs itself."""
    return cache_root() / "openvino-compiled"


def model_fingerprint(folder: str | os.PathLike | None) -> dict[str, Any]:
    """The identity of a model folder: its resolved path and, for each config or weight file at
    its top level, ``[name, target name, size, mtime_ns]`` (the target name is the blob's content
    hash in a hub snapshot). ``{"folder": None}`` when the folder is unknown (nothing cached then)."""
    if not folder or not Path(folder).is_dir():
        return {"folder": None}
    root = Path(folder).resolve()
    files = []
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and path.name.endswith(_MODEL_FILE_SUFFIXES):
            st = path.stat()
            files.append([path.name, Path(os.path.realpath(path)).name, st.st_size, st.st_mtime_ns])
    return {"folder": str(root), "files": files}


def conversion_key(fields: dict[str, Any]) -> str:
    """First 20 hex digits of the SHA-256 of ``fields`` as sorted JSON (plus ``FORMAT_VERSION``)."""
    text = json.dumps({**fields, "format": FORMAT_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def entry_dir(backend: str, fields: dict[str, Any]) -> Path:
    """The folder of the conversion described by ``fields`` (needs ``model`` and ``tower``)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(fields.get("model") or "model")).name)[-40:]
    return cache_root() / backend / f"{slug}-{fields.get('tower', 'x')}-{conversion_key(fields)}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> dict[str, dict[str, Any]]:
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns,
                                               "sha256": _sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def load_entry(folder: Path, fields: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of a verified conversion in ``folder``, or ``None`` when there is none.

    A folder whose manifest is missing, unreadable or made for other ``fields``, or one of whose
    files is missing, of another size or another SHA-256, is removed (one warning) and ``None``
    is returned: the caller converts again.
    """
    if not folder.exists():
        return None
    why = _problem(folder, fields)
    if why is None:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    log.warning("the saved conversion in %s is %s: converting again", folder, why)
    remove(folder)
    return None


def _problem(folder: Path, fields: dict[str, Any]) -> str | None:
    """Why the conversion in ``folder`` cannot be served, or ``None`` when it can."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "incomplete (no readable manifest)"
    if json.loads(json.dumps(fields, default=str)) != manifest.get("fields"):
        return "stale (made for another model, backend version or setting)"
    checked = False
    for name, want in (manifest.get("files") or {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != want.get("size"):
            return f"corrupt ({name} is missing or truncated)"
        # a file not written since it was checksummed (same size and mtime) is not read again: a
        # 400 MB text tower costs ~0.5 s of SHA-256 per run otherwise; any write changes the mtime
        if path.stat().st_mtime_ns == want.get("mtime_ns"):
            continue
        if _sha256(path) != want.get("sha256"):
            return f"corrupt ({name} does not match its checksum)"
        want["mtime_ns"], checked = path.stat().st_mtime_ns, True
    if checked:  # the checksums held: remember the files' times, so the next run skips them
        _rewrite_manifest(folder, manifest)
    return None if manifest.get("files") else "empty"


def _rewrite_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Replace ``folder``'s manifest atomically (best effort: a read-only cache keeps the old one)."""
    tmp = folder / f".{MANIFEST}.{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, folder / MANIFEST)
    except OSError as exc:
        log.debug("could not update %s: %s", folder / MANIFEST, exc)
        tmp.unlink(missing_ok=True)


def build_entry(folder: Path, fields: dict[str, Any], write: Callable[[Path], dict[str, Any] | None]) -> dict[str, Any]:
    """Run ``write(tmp_folder)`` (the backend saves its files there; it may return extra manifest
    facts), write the manifest with every file's size and SHA-256, and rename the folder into
    place atomically. Returns the manifest.

    Raises:
        whatever ``write`` raises (the temporary folder is removed first).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        t0 = time.perf_counter()
        extra = write(tmp) or {}
        manifest = {"fields": json.loads(json.dumps(fields, default=str)), "created": time.time(),
                    "seconds": round(time.perf_counter() - t0, 3), **extra, "files": _files(tmp)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
        if folder.exists():
            remove(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def remove(folder: Path) -> None:
    """Delete a conversion folder (renamed aside first, so no reader sees it half-deleted)."""
    aside = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.del"
    try:
        os.replace(folder, aside)
    except OSError:
        aside = folder
    shutil.rmtree(aside, ignore_errors=True)


@dataclass(frozen=True)
class Conversion:
    """One saved conversion, as ``wwts cache list`` and ``wwts doctor`` show it.

    Attributes:
        backend: ``openvino`` or ``onnxruntime``.
        path: its folder.
        model: the model folder it was made from.
        tower: ``image`` or ``text``.
        precision: ``float`` or ``int8``.
        size_bytes: bytes on disk.
        seconds: how long the conversion took.
        created: Unix time it was made.
    """

    backend: str
    path: Path
    model: str
    tower: str
    precision: str
    size_bytes: int
    seconds: float
    created: float


def list_conversions() -> list[Conversion]:
    """Every saved conversion (readable manifests only; not verified here), newest first."""
    out = []
    root = cache_root()
    for manifest_path in root.glob(f"*/*/{MANIFEST}") if root.is_dir() else []:
        folder = manifest_path.parent
        if folder.name.startswith("."):
            continue
        try:
            m = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            m = {}
        f = m.get("fields") or {}
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        out.append(Conversion(folder.parent.name, folder, str(f.get("model", "?")), str(f.get("tower", "?")),
                              str(f.get("precision", "?")), size, float(m.get("seconds", 0.0)),
                              float(m.get("created", 0.0))))
    return sorted(out, key=lambda c: c.created, reverse=True)


def clear_conversions(backend: str | None = None) -> tuple[int, int]:
    """Delete saved conversions (of ``backend`` only, when given), OpenVINO's compiled-blob cache
    and the bundles with them. Returns ``(folders removed, bytes freed)``."""
    count = freed = 0
    for conv in list_conversions():
        if backend is None or conv.backend == backend:
            remove(conv.path)
            count, freed = count + 1, freed + conv.size_bytes
    blobs = compiled_dir()
    if backend in (None, "openvino") and blobs.is_dir():
        freed += sum(p.stat().st_size for p in blobs.rglob("*") if p.is_file())
        shutil.rmtree(blobs, ignore_errors=True)
    # the bundles naming them (backends/bundle.py): small JSON files, of no use without the conversions
    # (a torch bundle names an OpenVINO text tower)
    for kind in [backend or "*"] + (["torch"] if backend == "openvino" else []):
        for bundle in (cache_root() / "bundles").glob(f"*-{kind}-*.json"):
            freed += bundle.stat().st_size
            bundle.unlink(missing_ok=True)
    return count, freed


def estimate_seconds(backend: str, precision: str, parameters: int) -> float | None:
    """Seconds a conversion of a tower with ``parameters`` weights will take, scaled from the
    conversions this machine made before (median seconds per parameter of the same backend and
    precision); ``None`` without such a history."""
    rates = sorted(c.seconds / c.params for c in _history(backend, precision) if c.params)
    return rates[len(rates) // 2] * parameters if rates else None


@dataclass(frozen=True)
class _Past:
    seconds: float
    params: int


def _history(backend: str, precision: str) -> list[_Past]:
    out = []
    for manifest_path in (cache_root() / backend).glob(f"*/{MANIFEST}"):
        try:
            m = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (m.get("fields") or {}).get("precision") == precision and m.get("parameters"):
            out.append(_Past(float(m.get("seconds", 0.0)), int(m["parameters"])))
    return out
