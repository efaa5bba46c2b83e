"""Reading a finished (or interrupted) output back for the commands that act on it: ``wwts
report``, ``wwts sort`` and XMP sidecars.

``read_results`` takes any of the three formats (``.csv``, ``.json``, ``.jsonl``), tells the task
from the file itself (a CSV's header, or the ``run`` section), and returns the ``run`` section and
the records as ``to_dict()``-shaped dicts through the same readers ``--resume`` uses
(``resume.read_existing``: escapes undone, a torn last line tolerated, an unfinished ``.json``
read from its ``.partial.jsonl``). ``record_labels`` is the one rule for "the labels of a record".
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .csv_format import BOM, unescape_cell
from .paths import output_format, partial_path, read_bytes
from .records import CaptionResult, ClassifyResult
from .resume import read_existing


@dataclass
class Results:
    """What an output file holds.

    Attributes:
        path: the file read.
        task: ``"classify"`` or ``"caption"``.
        run: the ``run`` section (model, device, dtype, images_per_s...), ``{}`` when unknown.
        records: one dict per image, in file order (``ImageRecord.to_dict()`` shape).
    """

    path: Path
    task: str
    run: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The records whose image failed (their ``error`` is set)."""
        return [r for r in self.records if r.get("error")]


def _csv_task(path: Path) -> str:
    """``caption`` when the CSV's header has a ``caption`` column, else ``classify``.

    Raises:
        UsageError: unreadable or empty file.
    """
    data = read_bytes(path)
    if data.startswith(BOM):
        data = data[len(BOM):]
    first = data.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    header = next(csv.reader(io.StringIO(first)), [])
    if not header:
        raise UsageError(f"{path} is empty: no CSV header")
    return "caption" if "caption" in [unescape_cell(c.strip()) for c in header] else "classify"


def read_results(path: Path) -> Results:
    """Read a wwts output file (``.csv``, ``.json`` or ``.jsonl``) back.

    Args:
        path: the output file of a ``classify`` or ``caption`` run.

    Returns:
        ``Results`` with the task, the run section and the records.

    Raises:
        UsageError: an extension other than .csv/.json/.jsonl, a CSV whose columns are not a
            wwts output's, or a file that is missing, unreadable or not a wwts output (exit code 2).
    """
    path = Path(path)
    fmt = output_format(path)
    if not path.exists() and not (fmt == "json" and partial_path(path).exists()):
        raise UsageError(f"results file {path} does not exist")
    if fmt == "csv":
        task = _csv_task(path)
        run, records = read_existing(path, CaptionResult if task == "caption" else ClassifyResult)
    else:
        run, records = read_existing(path, ClassifyResult)  # the record type matters for CSV only
        bad = next((r for r in records if not isinstance(r, dict) or "path" not in r), None)
        if bad is not None:
            raise UsageError(f"{path} holds a record without a path: not a wwts output")
        task = (run or {}).get("task") or ("caption" if any("caption" in r for r in records) else "classify")
    if task not in ("classify", "caption"):
        raise UsageError(f"{path}: unknown task {task!r} in its run section")
    return Results(path=path, task=task, run=dict(run or {}), records=list(records))


def record_labels(record: dict[str, Any]) -> list[tuple[str, float | None]]:
    """The labels a record gives its image, best first, as ``(label, score)``.

    Multi-label records (a non-empty ``labels`` list, items ``{"label", "score"}`` or plain
    strings) give all of them; otherwise the best ``label`` alone (``top_k`` is evidence, not a
    label: an image labelled 猫 with 狗 second is not a dog). Error and caption records give ``[]``.
    """
    if record.get("error"):
        return []
    many = record.get("labels")
    out: list[tuple[str, float | None]] = []
    if isinstance(many, list) and many:
        for item in many:
            if isinstance(item, dict) and item.get("label") not in (None, ""):
                out.append((str(item["label"]), _number(item.get("score"))))
            elif isinstance(item, str) and item:
                out.append((item, None))
        return out
    label = record.get("label")
    if label not in (None, ""):
        out.append((str(label), _number(record.get("score"))))
    return out


def _number(value: Any) -> float | None:
    """``value`` as a float, ``None`` when it is not a number."""
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None
