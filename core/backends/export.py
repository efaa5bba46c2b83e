"""Exports: a model's towers converted for one runtime, with the facts scoring needs, saved once in
the user cache as one artifact, verified on every load, rebuilt (never served) when corrupt or stale.

Layout: ``platformdirs.user_cache_dir("wwts")/conversions/<runtime>/<model>-<key>/`` (``$XDG_CACHE_HOME``
on Linux). The key is a digest of the weights' identity (``core.store.weights_identity``, the one
the embedding store keys by: hub id + revision, or a BLAKE3 digest of a local folder's files), the
runtime (``openvino`` / ``onnxruntime``) and its version, and ``FORMAT_VERSION``. A changed model
therefore gets another folder and its old export is never served. The folder holds:

- one sub-folder per converted tower and precision (``image-float``, ``image-int8``,
  ``text-float``) with the runtime's files;
- ``export.json``: ``{"format", "runtime", "version", "model", "towers": {name: {"fields",
  "files": {file: {"size", "mtime_ns", "blake3"}}, "seconds", "parameters", "created"}}, "facts"}``;
  ``facts`` are what a classify run needs to score without torch or transformers (logit scale and
  bias, the image processor's configuration, the token limit: written by the task that loaded the
  model, ``write_facts``).

A torch image tower beside an OpenVINO text tower (``select.auto_text_backend``) uses the
``openvino`` export's text tower and facts. A tower folder is written under a temporary name and
renamed into place, ``export.json`` is replaced atomically (``core.atomic``): a crash leaves no
half-written tower under a real name. A tower is checked before the runtime sees it: its files'
sizes, and the BLAKE3 hash of every file whose modification time is not the recorded one (an
untouched export is not re-read on every run); a mismatch removes the tower and the caller
converts again.
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

from ..atomic import atomic_write
from ..store import content_hash, weights_identity

log = logging.getLogger(__name__)

#: Version of the layout and of the export recipe; another number is never read.
FORMAT_VERSION = 2
EXPORT = "export.json"


def native_image_size(model: Any) -> int | None:
    """The side in pixels the vision tower of ``model`` was trained at (``vision_config.image_size``)."""
    size = getattr(getattr(getattr(model, "config", None), "vision_config", None), "image_size", None)
    return int(size) if isinstance(size, int) and not isinstance(size, bool) else None


def entry_name(fields: dict[str, Any], native_size: int | None) -> str:
    """A tower's name in ``export.json``: ``image-float``, ``text-float``, ``image-int8``...; an
    image tower converted at another input side than its model's ``native_size`` (``--image-size``,
    with interpolated position embeddings) is another export: ``image-float-160px``, so towers of
    different sizes never replace or stand in for each other."""
    name = f"{fields['tower']}-{fields['precision']}"
    size = fields.get("input_size")
    if fields["tower"] == "image" and size and native_size and size != native_size:
        name += f"-{size}px"
    return name


def text_input_size(input_size: int | None, native_size: int | None) -> int | None:
    """The ``input_size`` a text tower's export records: the model's ``native_size`` when the run's
    image side differs from it (``--image-size``): the text tower does not depend on it, and one
    text export serves every image size."""
    return native_size if input_size and native_size and input_size != native_size else input_size


def cache_root() -> Path:
    """``user_cache_dir("wwts")/conversions``, read at each call (so ``XDG_CACHE_HOME`` is honoured)."""
    return Path(user_cache_dir("wwts", appauthor=False)) / "conversions"


def compiled_dir() -> Path:
    """OpenVINO's compiled-blob cache (its ``CACHE_DIR`` property): ``conversions/openvino-compiled``.
    OpenVINO keys and checks the blobs itself."""
    return cache_root() / "openvino-compiled"


def runtime_of(backend: str) -> str:
    """The runtime whose export a backend uses: ``torch`` (an OpenVINO text tower beside torch's
    image tower) uses ``openvino``'s."""
    return "openvino" if backend == "torch" else backend


def export_dir(folder: str | os.PathLike, runtime: str, version: str) -> Path:
    """The export folder of the weights in model ``folder`` for ``runtime`` at ``version``.

    Raises:
        OSError: the folder is not a readable directory (its weights cannot be identified).
    """
    if not folder or not Path(folder).is_dir():
        raise OSError(f"no model folder to identify ({folder!r})")
    weights = weights_identity(folder, cache_root() / "weights-index.json")
    text = json.dumps({"weights": weights, "runtime": runtime, "version": version, "format": FORMAT_VERSION},
                      sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(weights.get("repo") or Path(folder).resolve().name))[-40:]
    return cache_root() / runtime / f"{slug}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:20]}"


def read_export(where: Path) -> dict[str, Any]:
    """The ``export.json`` of the export in ``where``; an empty one (no towers) when it is missing,
    unreadable or of another format."""
    try:
        data = json.loads((where / EXPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        return {"format": FORMAT_VERSION, "towers": {}}
    data.setdefault("towers", {})
    return data


def _save(where: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Re-read ``export.json``, apply ``change`` and replace the file atomically.

    Raises:
        OSError: the file cannot be written.
    """
    data = read_export(where)
    change(data)
    atomic_write(where / EXPORT, [json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8")])


def _files(folder: Path) -> dict[str, dict[str, Any]]:
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns,
                                               "blake3": content_hash(p, threads=-1)}
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _problem(folder: Path, entry: dict[str, Any]) -> str | None:
    """Why the tower in ``folder`` cannot be served, or ``None`` when it can. Files whose hash was
    checked again (a new mtime) get their new mtime recorded in ``entry``."""
    if not entry.get("files"):
        return "empty"
    for name, want in entry["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != want.get("size"):
            return f"corrupt ({name} is missing or truncated)"
        # a file not written since it was hashed (same size and mtime) is not read again: a
        # 400 MB text tower costs a read per run otherwise; any write changes the mtime
        if path.stat().st_mtime_ns == want.get("mtime_ns"):
            continue
        if content_hash(path, threads=-1) != want.get("blake3"):
            return f"corrupt ({name} does not match its checksum)"
        want["mtime_ns"] = path.stat().st_mtime_ns
    return None


def verified(where: Path, name: str, fields: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The ``export.json`` entry of tower ``name`` (``image-float``...) of the export in ``where``,
    when it is there and verifies (and, given ``fields``, was made for them); else ``None``. A
    stale or corrupt tower is removed (one warning): the caller converts again. A folder that
    ``export.json`` does not list (a crash, or a concurrent writer whose entry was lost) is not
    served; the next conversion replaces it."""
    entry = read_export(where)["towers"].get(name)
    folder = where / name
    if entry is None:  # none, or one being renamed into place (build_tower replaces a leftover)
        return None
    if fields is not None and json.loads(json.dumps(fields, default=str)) != entry.get("fields"):
        why = "stale (made for another model, backend version or setting)"
    else:
        before = json.dumps(entry, sort_keys=True)
        why = _problem(folder, entry)
        if why is None:
            if json.dumps(entry, sort_keys=True) != before:  # hashes held: remember the files' times
                _best_effort(where, lambda data: data["towers"].__setitem__(name, entry))
            return {**entry, "dir": str(folder)}
    log.warning("the saved conversion in %s is %s: converting again", folder, why)
    remove(folder)
    _best_effort(where, lambda data: data["towers"].pop(name, None))
    return None


def _best_effort(where: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """``_save``, where a read-only cache keeps the old file."""
    try:
        if (where / EXPORT).exists():
            _save(where, change)
    except OSError as exc:
        log.debug("could not update %s: %s", where / EXPORT, exc)


def build_tower(where: Path, name: str, fields: dict[str, Any], write: Callable[[Path], dict[str, Any] | None],
                *, weights_folder: str, version: str) -> dict[str, Any]:
    """Run ``write(tmp_folder)`` (the runtime saves tower ``name``'s files there; it may return
    extra manifest facts such as ``parameters``), rename the folder into place and record it in
    ``export.json`` with ``fields`` and each file's size and BLAKE3 hash. Returns the entry (with
    ``dir``).

    Raises:
        whatever ``write`` raises (the temporary folder is removed first); OSError: the cache
        cannot be written.
    """
    where.mkdir(parents=True, exist_ok=True)
    tmp = where / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        t0 = time.perf_counter()
        extra = write(tmp) or {}
        entry = {"fields": json.loads(json.dumps(fields, default=str)), "created": time.time(),
                 "seconds": round(time.perf_counter() - t0, 3), **extra, "files": _files(tmp)}
        if (where / name).exists():
            remove(where / name)
        os.replace(tmp, where / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    def record(data: dict[str, Any]) -> None:
        data.update(runtime=where.parent.name, version=version, model=str(weights_folder))
        data["towers"][name] = entry

    _save(where, record)
    return {**entry, "dir": str(where / name)}


def write_facts(where: Path, facts: dict[str, Any]) -> None:
    """Record the facts scoring needs (JSON-ready, kept as they are) in the export in ``where``.

    Raises:
        OSError: the cache cannot be written.
    """
    _save(where, lambda data: data.__setitem__("facts", facts))


def remove(folder: Path) -> None:
    """Delete a folder of the cache (renamed aside first, so no reader sees it half-deleted)."""
    aside = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.del"
    try:
        os.replace(folder, aside)
    except OSError:
        aside = folder
    shutil.rmtree(aside, ignore_errors=True)


@dataclass(frozen=True)
class Conversion:
    """One converted tower of an export, as ``wwts conversions list`` and ``wwts doctor`` show it.

    Attributes:
        backend: the runtime, ``openvino`` or ``onnxruntime``.
        path: the tower's folder.
        model: the model folder it was made from.
        tower: ``image`` or ``text``.
        precision: ``float`` or ``int8``.
        size_bytes: bytes on disk.
        seconds: how long the conversion took.
        created: Unix time it was made.
        parameters: the tower's weights (0 when not recorded).
    """

    backend: str
    path: Path
    model: str
    tower: str
    precision: str
    size_bytes: int
    seconds: float
    created: float
    parameters: int = 0


def exports(runtime: str = "*") -> list[Path]:
    """The export folders of ``runtime`` (every runtime by default)."""
    root = cache_root()
    return sorted(p.parent for p in root.glob(f"{runtime}/*/{EXPORT}") if not p.parent.name.startswith(".")) \
        if root.is_dir() else []


def list_conversions(runtime: str = "*") -> list[Conversion]:
    """Every converted tower in the saved exports (as recorded; not verified here), newest first."""
    out = []
    for where in exports(runtime):
        data = read_export(where)
        for name, entry in data["towers"].items():
            fields, folder = entry.get("fields") or {}, where / name
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
            out.append(Conversion(where.parent.name, folder, str(data.get("model", "?")),
                                  str(fields.get("tower", "?")), str(fields.get("precision", "?")), size,
                                  float(entry.get("seconds", 0.0)), float(entry.get("created", 0.0)),
                                  int(entry.get("parameters") or 0)))
    return sorted(out, key=lambda c: c.created, reverse=True)


def clear_conversions(backend: str | None = None) -> tuple[int, int]:
    """Delete the saved exports (of ``backend``'s runtime only, when given; ``openvino``'s hold what
    a torch image tower's run uses too) and OpenVINO's compiled-blob cache with them. Returns
    ``(converted towers removed, bytes freed)``."""
    runtime = runtime_of(backend) if backend else "*"
    count = len(list_conversions(runtime))
    freed = 0
    for where in exports(runtime):
        freed += sum(p.stat().st_size for p in where.rglob("*") if p.is_file())
        remove(where)
    blobs = compiled_dir()
    if runtime in ("*", "openvino") and blobs.is_dir():
        freed += sum(p.stat().st_size for p in blobs.rglob("*") if p.is_file())
        shutil.rmtree(blobs, ignore_errors=True)
    return count, freed


def estimate_seconds(runtime: str, precision: str, parameters: int) -> float | None:
    """Seconds a conversion of a tower with ``parameters`` weights will take, scaled from the
    conversions this machine made before (median seconds per parameter of the same runtime and
    precision, of towers within 4x this one's size: a tiny test model's fixed costs per parameter
    once announced 503 s for a conversion that took 6 s); ``None`` without such a history."""
    rates = sorted(c.seconds / c.parameters for c in list_conversions(runtime)
                   if c.precision == precision and c.parameters and parameters / 4 <= c.parameters <= 4 * parameters)
    return rates[len(rates) // 2] * parameters if rates else None
