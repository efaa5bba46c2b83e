"""What runs measured on this machine, per model: the photos it processed, each path's load seconds
and images/s, and the int8 gate's verdict. ``--backend auto``'s size rule (``backends.route``)
reads them; every classify run writes them when it ends.

The file is ``run-records.json`` beside ``cpu-dtype.json`` (``calibration.cache_file``'s folder:
``$XDG_CACHE_HOME/wwts`` on Linux). Entries are keyed by the machine (CPU model name, a digest of its
flags, the thread count: a VM image moved to another host starts afresh) and then by model (its
name as the run resolved it: a hub id or a folder). A path is ``<backend>/<precision>``
(``torch/float32``, ``torch/bfloat16``, ``openvino/float``, ``openvino/int8``, ``onnxruntime/int8``)
and holds ``{"images_per_s", "load_s", "convert_s", "runs"}``: the steady images/s and the load
seconds of its last run that started from a saved conversion (``load_s``) or converted
(``convert_s``: the whole load of a converting run, torch and transformers included).

A record that cannot be read is ignored (the rule falls back on its priors); one that cannot be
written is not an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..atomic import atomic_write
from . import calibration, cpu

log = logging.getLogger(__name__)

#: Version of the file's layout; another one is ignored (and replaced on the next write).
RECORDS_VERSION = 1


def records_file() -> Path:
    """``run-records.json`` in wwts' user cache folder (read at each call, so ``XDG_CACHE_HOME``
    is honoured)."""
    return calibration.cache_file().with_name("run-records.json")


def machine_key(threads: int) -> str:
    """``"<cpu name>|flags:<12 hex>|<n> threads"``: what decides a speed besides the model."""
    digest = hashlib.sha1(" ".join(sorted(cpu.cpu_flags())).encode()).hexdigest()[:12]
    return f"{cpu.cpu_model_name() or 'unknown CPU'}|flags:{digest}|{threads} threads"


def _read() -> dict[str, Any]:
    with contextlib.suppress(Exception):
        data = json.loads(records_file().read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("version") == RECORDS_VERSION and isinstance(data.get("machines"), dict):
            return data
    return {"version": RECORDS_VERSION, "machines": {}}


def model_record(model: str, threads: int) -> dict[str, Any]:
    """This machine's record of ``model``: ``{"images": int, "paths": {path: {...}}, "int8": {...}}``
    (empty parts when nothing was recorded)."""
    entry = _read()["machines"].get(machine_key(threads), {}).get(str(model), {})
    entry = entry if isinstance(entry, dict) else {}
    return {"images": int(entry.get("images") or 0), "paths": dict(entry.get("paths") or {}),
            "int8": dict(entry.get("int8") or {})}


def _update(model: str, threads: int, change: Callable[[dict[str, Any]], None]) -> None:
    """Re-read the file, apply ``change`` to ``model``'s entry and replace the file atomically."""
    path = records_file()
    try:
        data = _read()
        entry = data["machines"].setdefault(machine_key(threads), {}).setdefault(str(model), {})
        change(entry)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, [json.dumps(data, indent=1, ensure_ascii=False).encode("utf-8")])
    except Exception as exc:  # a read-only cache: the run's result is not at stake
        log.debug("could not record the run in %s: %s", path, exc)


def record_run(model: str, threads: int, path: str, *, images: int, images_per_s: float, load_s: float,
               converted: bool) -> None:
    """Add a finished run of ``images`` photos on ``path`` (``torch/float32``...) to ``model``'s record:
    its steady ``images_per_s`` (ignored when 0: a run served by the store), and ``load_s`` seconds as
    ``convert_s`` when it converted, else as ``load_s``."""
    def change(entry: dict[str, Any]) -> None:
        entry["images"] = int(entry.get("images") or 0) + max(0, int(images))
        slot = entry.setdefault("paths", {}).setdefault(path, {})
        if images_per_s > 0:
            slot["images_per_s"] = round(float(images_per_s), 3)
        slot["convert_s" if converted else "load_s"] = round(float(load_s), 3)
        slot["runs"] = int(slot.get("runs") or 0) + 1

    _update(model, threads, change)


def record_int8(model: str, threads: int, verdict: dict[str, Any]) -> None:
    """Remember the int8 gate's ``verdict`` (``{"passed": bool, "cosine_min", "top1"...}``) for
    ``model`` on this machine, with the time it was measured."""
    stamped = {**verdict, "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _update(model, threads, lambda entry: entry.__setitem__("int8", stamped))
