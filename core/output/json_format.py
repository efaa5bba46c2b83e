"""JSON and JSON Lines: strict encoding of records and run sections, and reading them back.

Strict JSON (``allow_nan=False``): a record holding a NaN or infinity is written as an error
record (``nonfinite: ...``, task fields empty, see ``finite_record``), in CSV too; such a value in
the run section becomes ``null``. UTF-8, ``ensure_ascii=False`` (Chinese stays readable). A path
decoded from non-UTF-8 bytes holds lone surrogates (``os.fsdecode``, PEP 383 surrogateescape);
they are written as the JSON escape ``\\udcXX`` (``backslashreplace``), which is valid JSON and
reads back to the very same ``str``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .paths import read_bytes
from .records import ImageRecord


def json_bytes(obj: Any, **kwargs: Any) -> bytes:
    """Strict UTF-8 JSON; lone surrogates become the JSON escape ``\\udcXX`` (reads back unchanged).

    Raises:
        ValueError: ``obj`` holds a NaN or infinity (``allow_nan=False``: strict parsers reject
            ``NaN``); callers pass values through ``finite_json`` / ``finite_record_dict`` first.
    """
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, default=str, **kwargs)
    return text.encode("utf-8", "backslashreplace")


def _non_finite(obj: Any, where: str = "") -> list[str]:
    """Where ``obj`` (a JSON-ready value) holds a NaN or infinity: ``["score", "top_k[0].score"]``."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [f"{where or 'value'} is {obj}"]
    if isinstance(obj, dict):
        return [w for k, v in obj.items() for w in _non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(obj, (list, tuple)):
        return [w for i, v in enumerate(obj) for w in _non_finite(v, f"{where}[{i}]")]
    return []


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinity replaced by ``None`` (for the run section)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def _non_finite_error(found: list[str]) -> str:
    return ("nonfinite: the model gave a non-finite result (" + ", ".join(found[:3])
            + ("..." if len(found) > 3 else "") + "); no result for this image")


def finite_record(record: ImageRecord) -> ImageRecord:
    """``record`` itself when every number in it is finite; else an error record for the same
    image: the fields common to all records (path, size, frames, note) are kept, the task's
    results (label, score, top_k, caption) are dropped, and ``error`` says which value was not
    finite (an existing error is kept). A writer never emits ``NaN`` or ``Infinity``."""
    found = _non_finite(record.to_dict())
    if not found:
        return record
    common = {f.name: getattr(record, f.name) for f in dataclasses.fields(ImageRecord)}
    common = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in common.items()}
    common["error"] = record.error or _non_finite_error(found)
    return type(record)(**common)


def finite_record_dict(record: dict[str, Any]) -> dict[str, Any]:
    """The same rule as ``finite_record`` for a record read back from a file (``--resume`` carries
    old records over; ``json.loads`` accepts ``NaN``): non-finite numbers become ``None`` and the
    record gets an ``error`` when it has none."""
    found = _non_finite(record)
    if not found:
        return record
    fixed = finite_json(record)
    fixed["error"] = fixed.get("error") or _non_finite_error(found)
    return fixed


def record_line(record: dict[str, Any]) -> bytes:
    """One JSON Lines line (with its ``\\n``) for a ``to_dict()``-shaped record, made finite."""
    return json_bytes(finite_record_dict(record)) + b"\n"


def final_json_chunks(run: dict[str, Any], record_lines: Iterable[bytes]) -> Iterator[bytes]:
    """The published ``.json`` document: ``{"run": {...}, "results": [...]}``, one record a line.

    Args:
        run: the run section (non-finite numbers become ``null``).
        record_lines: each record's JSON text, without a line break.
    """
    yield b'{\n  "run": ' + json_bytes(finite_json(run), indent=2).replace(b"\n", b"\n  ") + b',\n  "results": ['
    sep = b"\n    "
    for line in record_lines:
        yield sep + line
        sep = b",\n    "
    yield b"\n  ]\n}\n"


def scan_jsonl(path: Path) -> tuple[list[tuple[dict[str, Any], int, int]], int]:
    """Read a JSONL file of records, tolerating a torn tail.

    Returns:
        ``(rows, good_end)``: each row is ``(record dict, start byte, end byte)``; ``good_end`` is
        the byte offset just after the last complete line. A last line without its newline, or a
        last line that is not a JSON object (torn write, zero-filled block after a crash), is
        dropped.

    Raises:
        UsageError: the file cannot be read, or a line other than the last is not a record.
    """
    data = read_bytes(path)
    rows: list[tuple[dict[str, Any], int, int]] = []
    good_end = 0
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        last = end >= len(data)
        line = data[pos:end]
        if nl < 0:  # torn: no newline
            break
        if line.strip():
            try:
                obj = json.loads(line.decode("utf-8"))
                if not isinstance(obj, dict) or "path" not in obj:
                    raise ValueError("not a record object")
            except ValueError as exc:
                if last:
                    break
                lineno = data.count(b"\n", 0, pos) + 1
                raise UsageError(f"{path}: line {lineno} is not a result record ({exc})") from None
            rows.append((obj, pos, end))
        good_end = end
        pos = end
    return rows, good_end


def read_json_file(path: Path) -> Any:
    """The JSON value in ``path`` (a BOM is tolerated).

    Raises:
        UsageError: unreadable file or invalid JSON.
    """
    try:
        return json.loads(read_bytes(path).decode("utf-8-sig"))
    except ValueError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None


def read_final_json(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """``(run, records)`` of a published ``.json`` output (``run`` is ``None`` when missing).

    Raises:
        UsageError: unreadable file, invalid JSON, or not ``{"run": ..., "results": [...]}``.
    """
    doc = read_json_file(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise UsageError(f'{path} is not a wwts result file (expected {{"run": ..., "results": [...]}})')
    run = doc.get("run")
    return (run if isinstance(run, dict) else None), doc["results"]
