"""Result writers: a stream of per-image records → ``.csv``, ``.json`` or ``.jsonl`` on disk.

The format is chosen by the output file's extension (case-insensitive, see ``output_format``).
The CLI calls ``ResultWriter.write`` once per mini-batch the engine yields; every call appends the records,
flushes and ``os.fsync``-s them, so an interrupted run loses at most the batch in flight.

Files next to the output ``OUT`` (all in the same folder, so ``os.replace`` stays atomic):

``OUT.run.json``
    The run section (model, device, dtype, labels / prompt...), rewritten atomically at open and at
    close (merged with the final statistics). CSV and JSONL have no place for it inside, and
    ``--resume`` must know whether earlier records were made with the same settings, so for those
    formats it stays after the run. For ``.json`` it exists only while the run is unfinished (the
    published file carries the run section inside).
``OUT.partial.jsonl`` (``.json`` only)
    The records of an unfinished ``.json`` run, one JSON object per line, appended per batch
    exactly like a ``.jsonl`` output. While it exists it is the complete truth: resuming copies the
    records of an existing ``OUT`` into it first (atomically), and ``--overwrite`` starts it empty.
    At ``close()`` the final JSON ``{"run": {...}, "results": [...]}`` is written to a temporary
    file in the same folder, fsync-ed and published with ``os.replace``; then the partial file and
    ``OUT.run.json`` are removed. If publishing fails, the old ``OUT`` (if any) is untouched, the
    partial file stays and the error says to rerun with ``--resume``.
``OUT.lock`` and ``OUT.lock.info``
    The exclusive lock of the run writing ``OUT`` (``lock_output`` / ``OutputLock``), taken before
    the model loads and held to the end, and the holder's pid, host, start time and command line,
    which a second run reads back to say who holds the lock. Both are removed at the end.

A failed ``write`` (disk full) cuts the data file back to the records of the earlier batches and
marks the writer failed: nothing more is written and a ``.json`` output is not published, so its
records are in ``OUT.partial.jsonl`` (``ResultWriter.saved_path``); ``ResultWriter.written``
counts the records really written.

Errors: an output that cannot be used before the run starts (folder not writable, locked by
another run, corrupt on ``--resume``) raises ``OutputError`` (exit code 2); a write failing
mid-run raises ``WwtsError`` (exit code 1).

Encodings:

* JSON / JSONL: strict JSON (``allow_nan=False``): a record holding a NaN or infinity is written
  as an error record (``nonfinite: ...``, task fields empty, see ``_finite_record``), in CSV too;
  such a value in the run section becomes ``null``. UTF-8, ``ensure_ascii=False`` (Chinese stays
  readable). A path decoded from
  non-UTF-8 bytes holds lone surrogates (``os.fsdecode``, PEP 383 surrogateescape); they are
  written as the JSON escape ``\\udcXX`` (``backslashreplace``), which is valid JSON and reads back
  to the very same ``str``.
* CSV: UTF-8 with a BOM so that Excel detects the encoding, ``\\r\\n`` row ends (RFC 4180), columns
  ``record_type.csv_fields``, cells from ``record.csv_row()``. Two reversible cell escapes, undone by
  ``read_existing``:

  - lone surrogates are written as ``\\uXXXX`` (lower-case hex, like ``backslashreplace``); a
    backslash in the original text that is followed by ``uXXXX`` (a surrogate code) or ``x5c`` is
    itself written as ``\\x5c`` so the escape can be undone without ambiguity;
  - formula injection: a cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return
    gets a leading ``'`` so spreadsheets show it as text instead of running it (OWASP, "CSV
    Injection", https://owasp.org/www-community/attacks/CSV_Injection). Plain numbers (``-0.5``)
    are left alone. A cell that itself starts with ``'`` also gets one more, so reading strips
    exactly one leading ``'`` from any cell that has it.

``--retry-failed`` uses ``drop_records``: it rewrites the output (atomically) without the records
of the given paths; the caller then reopens it with ``resume=True`` and processes those images
again, so every image ends up exactly once (retried images move to the end).

This module does not import torch.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import io
import json
import math
import os
import re
import socket
import sys
import time
import typing
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from wwts.core.errors import UsageError, WwtsError, describe
from .records import ImageRecord

__all__ = [
    "FORMATS",
    "OutputError",
    "OutputLock",
    "ResultWriter",
    "drop_records",
    "lock_output",
    "open_writer",
    "output_format",
    "partial_path",
    "pending_paths",
    "read_existing",
    "run_sidecar_path",
]


class OutputError(WwtsError):
    """The output cannot be used: its folder cannot be created or written, it is locked by
    another run, or an existing output to ``--resume`` is unreadable or corrupt. Exit code 2
    (found before any image is processed). A write that fails mid-run (disk full) stays a plain
    ``WwtsError`` (exit code 1): the records written so far are kept."""

    exit_code = 2

#: Output formats by file extension (lower case, with the dot).
FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl"}

_BOM = b"\xef\xbb\xbf"
#: Cell starts that spreadsheets treat as a formula (OWASP "CSV Injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
#: In CSV cells: a lone surrogate, or a backslash that would read back as one of our escapes.
_CSV_ESCAPE_RE = re.compile(r"[\ud800-\udfff]|\\(?=ud[89a-f][0-9a-f]{2}|x5c)")
_CSV_UNESCAPE_RE = re.compile(r"\\(?:u(d[89a-f][0-9a-f]{2})|x5c)")
#: One ``label:score`` item of a top_k cell (``人:0.9120;车:0.0510``); the label is the shortest
#: prefix followed by ``:number`` and then ``;`` or the end.
_TOP_K_ITEM_RE = re.compile(
    r"(.*?):([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|nan|[+-]?inf)(?:;|\Z)", re.DOTALL
)


# ----------------------------------------------------------------------------------------------
# Paths and formats


def output_format(path: Path) -> str:
    """The format of an output file, from its extension (case-insensitive).

    Returns:
        ``"csv"``, ``"json"`` or ``"jsonl"``.

    Raises:
        UsageError: any other extension; the message names the valid ones.
    """
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(
            f"cannot tell the output format of {path}: use a file name ending in "
            + ", ".join(FORMATS)
        )
    return fmt


def run_sidecar_path(path: Path) -> Path:
    """``OUT.run.json``: where the run section of output ``path`` is kept (see the module doc)."""
    path = Path(path)
    return path.with_name(path.name + ".run.json")


def partial_path(path: Path) -> Path:
    """``OUT.partial.jsonl``: the records of an unfinished ``.json`` output ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".partial.jsonl")


# ----------------------------------------------------------------------------------------------
# Encoding helpers


def _json_bytes(obj: Any, **kwargs: Any) -> bytes:
    """Strict UTF-8 JSON; lone surrogates become the JSON escape ``\\udcXX`` (reads back unchanged).

    Raises:
        ValueError: ``obj`` holds a NaN or infinity (``allow_nan=False``: strict parsers reject
            ``NaN``); callers pass values through ``_finite_json`` / ``_finite_record_dict`` first.
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


def _finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinity replaced by ``None`` (for the run section)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_json(v) for v in obj]
    return obj


def _non_finite_error(found: list[str]) -> str:
    return ("nonfinite: the model gave a non-finite result (" + ", ".join(found[:3])
            + ("..." if len(found) > 3 else "") + "); no result for this image")


def _finite_record(record: ImageRecord) -> ImageRecord:
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


def _finite_record_dict(record: dict[str, Any]) -> dict[str, Any]:
    """The same rule as ``_finite_record`` for a record read back from a file (``--resume`` carries
    old records over; ``json.loads`` accepts ``NaN``): non-finite numbers become ``None`` and the
    record gets an ``error`` when it has none."""
    found = _non_finite(record)
    if not found:
        return record
    fixed = _finite_json(record)
    fixed["error"] = fixed.get("error") or _non_finite_error(found)
    return fixed


def _record_line(record: dict[str, Any]) -> bytes:
    return _json_bytes(_finite_record_dict(record)) + b"\n"


def _final_json_chunks(run: dict[str, Any], record_lines: Iterable[bytes]) -> Iterator[bytes]:
    """The published ``.json`` document: ``{"run": {...}, "results": [...]}``, one record a line."""
    yield b'{\n  "run": ' + _json_bytes(_finite_json(run), indent=2).replace(b"\n", b"\n  ") + b',\n  "results": ['
    sep = b"\n    "
    for line in record_lines:
        yield sep + line
        sep = b",\n    "
    yield b"\n  ]\n}\n"


def _escape_cell(text: str) -> str:
    """Make one CSV cell valid UTF-8 and formula-safe (both reversible, see the module doc)."""
    text = _CSV_ESCAPE_RE.sub(
        lambda m: "\\x5c" if m.group() == "\\" else f"\\u{ord(m.group()):04x}", text
    )
    if text.startswith("'") or (text.startswith(_FORMULA_STARTS) and not _NUMBER_RE.fullmatch(text)):
        text = "'" + text
    return text


def _unescape_cell(text: str) -> str:
    """Inverse of ``_escape_cell``."""
    if text.startswith("'"):
        text = text[1:]
    return _CSV_UNESCAPE_RE.sub(
        lambda m: chr(int(m.group(1), 16)) if m.group(1) else "\\", text
    )


def _csv_bytes(rows: Iterable[Sequence[str]]) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    for row in rows:
        writer.writerow([_escape_cell(cell) for cell in row])
    return buf.getvalue().encode("utf-8")


def _parse_top_k(text: str, where: str) -> list[dict[str, Any]]:
    """``"人:0.9120;车:0.0510"`` → ``[{"label": "人", "score": 0.912}, ...]``.

    Raises:
        OutputError: the cell is not a list of ``label:score`` items.
    """
    items: list[dict[str, Any]] = []
    pos = 0
    while pos < len(text):
        m = _TOP_K_ITEM_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise OutputError(f"{where}: cannot read top_k cell {text!r} (expected 人:0.9120;车:0.0510)")
        items.append({"label": m.group(1), "score": float(m.group(2))})
        pos = m.end()
    return items


def _field_kinds(record_type: type[ImageRecord]) -> dict[str, str]:
    """Field name → ``"str"``, ``"int"``, ``"float"`` or ``"list"``, from the type hints."""
    kinds: dict[str, str] = {}
    for name, hint in typing.get_type_hints(record_type).items():
        if typing.get_origin(hint) is typing.ClassVar:
            continue
        args = typing.get_args(hint) or (hint,)
        if typing.get_origin(hint) is list:
            kinds[name] = "list"
        elif int in args:
            kinds[name] = "int"
        elif float in args:
            kinds[name] = "float"
        else:
            kinds[name] = "str"
    return kinds


def _csv_record(cells: dict[str, str], kinds: dict[str, str], where: str) -> dict[str, Any]:
    """One parsed CSV row (already unescaped) → the record's ``to_dict()`` shape.

    An empty cell reads as ``None`` (``[]`` for a list), except that an empty text cell of a
    successful record reads as ``""`` (e.g. an empty caption).

    Raises:
        OutputError: a number or top_k cell that cannot be parsed.
    """
    ok = cells.get("error", "") == ""
    out: dict[str, Any] = {}
    for name, text in cells.items():
        kind = kinds.get(name, "str")
        try:
            if kind == "list":
                out[name] = _parse_top_k(text, where) if text else []
            elif text == "":
                out[name] = "" if (ok and kind == "str" and name != "error") else None
            elif kind == "int":
                out[name] = int(text)
            elif kind == "float":
                out[name] = float(text)
            else:
                out[name] = text
        except ValueError:
            raise OutputError(f"{where}: column {name!r} is not a number: {text!r}") from None
    return out


# ----------------------------------------------------------------------------------------------
# Scanning existing files (tolerating a torn tail)


def _scan_jsonl(path: Path) -> tuple[list[tuple[dict[str, Any], int, int]], int]:
    """Read a JSONL file of records.

    Returns:
        ``(rows, good_end)``: each row is ``(record dict, start byte, end byte)``; ``good_end`` is
        the byte offset just after the last complete line. A last line without its newline, or a
        last line that is not a JSON object (torn write, zero-filled block after a crash), is
        dropped.

    Raises:
        OutputError: the file cannot be read, or a line other than the last is not a record.
    """
    data = _read_bytes(path)
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
                raise OutputError(f"{path}: line {lineno} is not a result record ({exc})") from None
            rows.append((obj, pos, end))
        good_end = end
        pos = end
    return rows, good_end


def _scan_csv(
    path: Path, fields: Sequence[str]
) -> tuple[bool, list[tuple[list[str], int, int]], int]:
    """Read a CSV output written by this module.

    Returns:
        ``(has_header, rows, good_end)``: rows are ``(raw cells, start byte, end byte)`` after the
        header; ``good_end`` is the byte offset after the last complete row (a row must end with a
        line break; a torn last row is dropped). ``has_header`` is False for an empty file or one
        whose header line itself is torn.

    Raises:
        OutputError: the file cannot be read, or a row other than the last is malformed.
        UsageError: the header is not ``fields`` (the file was written by another task).
    """
    data = _read_bytes(path)
    base = len(_BOM) if data.startswith(_BOM) else 0
    text = data[base:].decode("utf-8", "surrogateescape")
    consumed = base
    last_line_complete = True

    def lines() -> Iterator[str]:
        nonlocal consumed, last_line_complete
        for line in io.StringIO(text, newline=""):
            consumed += len(line.encode("utf-8", "surrogateescape"))
            last_line_complete = line.endswith(("\n", "\r"))
            yield line

    reader = csv.reader(lines(), strict=True)
    header: list[str] | None = None
    rows: list[tuple[list[str], int, int]] = []
    good_end = base
    start = base
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if consumed >= len(data):  # unterminated quote at the end: torn
                break
            raise OutputError(f"{path}: malformed CSV near line {reader.line_num}: {exc}") from None
        if not last_line_complete and consumed >= len(data):
            break  # last row without its line break: torn
        if header is None:
            header = row
            if [_unescape_cell(c) for c in header] != list(fields):
                raise UsageError(
                    f"{path} has columns {','.join(header)}; expected {','.join(fields)}"
                    " (was it written by another task?)"
                )
        elif row:
            if len(row) != len(fields):
                if consumed >= len(data):
                    break
                raise OutputError(
                    f"{path}: line {reader.line_num} has {len(row)} cells, expected {len(fields)}"
                )
            rows.append((row, start, consumed))
        good_end = consumed
        start = consumed
    return header is not None, rows, good_end


def _read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise OutputError(f"cannot read {path}: {exc}") from None


def _read_json_file(path: Path) -> Any:
    try:
        return json.loads(_read_bytes(path).decode("utf-8-sig"))
    except ValueError as exc:
        raise OutputError(f"{path} is not valid JSON: {exc}") from None


def _read_run_sidecar(path: Path) -> dict[str, Any] | None:
    sidecar = run_sidecar_path(path)
    if not sidecar.exists():
        return None
    run = _read_json_file(sidecar)
    if not isinstance(run, dict):
        raise OutputError(f"{sidecar} does not hold a run section (a JSON object)")
    return run


def _read_final_json(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    doc = _read_json_file(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise OutputError(f'{path} is not a wwts result file (expected {{"run": ..., "results": [...]}})')
    run = doc.get("run")
    return (run if isinstance(run, dict) else None), doc["results"]


def read_existing(
    path: Path, record_type: type[ImageRecord]
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Read back an output file (for ``--resume`` / ``--retry-failed``), tolerating a torn tail.

    Args:
        path: the output file (``.csv``, ``.json`` or ``.jsonl``); it need not exist.
        record_type: the record class of the run (gives the CSV columns and their types).

    Returns:
        ``(run, records)``: the run section (``None`` when unknown) and the records in file order,
        as ``record.to_dict()``-shaped dicts. CSV numbers come back rounded as written (scores to
        4 decimals); escapes are undone, so paths compare equal to the engine's ``path`` strings.
        For ``.json``, an unfinished run's ``OUT.partial.jsonl`` takes precedence over ``OUT``.
        A missing output gives ``(None, [])``. Nothing is modified.

    Raises:
        UsageError: bad extension, or a CSV whose header does not match ``record_type``.
        OutputError: unreadable or corrupt file (exit code 2).
    """
    path = Path(path)
    fmt = output_format(path)
    if fmt == "json":
        partial = partial_path(path)
        if partial.exists():
            rows, _ = _scan_jsonl(partial)
            return _read_run_sidecar(path), [r for r, _, _ in rows]
        if path.exists():
            return _read_final_json(path)
        return None, []
    if not path.exists():
        return None, []
    if fmt == "jsonl":
        rows, _ = _scan_jsonl(path)
        return _read_run_sidecar(path), [r for r, _, _ in rows]
    fields = record_type.csv_fields
    kinds = _field_kinds(record_type)
    _, csv_rows, _ = _scan_csv(path, fields)
    records = [
        _csv_record(dict(zip(fields, (_unescape_cell(c) for c in cells))), kinds, f"{path}")
        for cells, _, _ in csv_rows
    ]
    # Fields the CSV has no column for (frames, note) read back as None, keeping the to_dict() shape.
    missing = [f.name for f in dataclasses.fields(record_type) if f.name not in fields]
    for record in records:
        for name in missing:
            record.setdefault(name, None)
    return _read_run_sidecar(path), records


# ----------------------------------------------------------------------------------------------
# Atomic and durable writes


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where directories cannot be opened."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to a temporary file next to ``path``, fsync it, ``os.replace`` it over.

    The temporary file is created with mode 0o666 minus the umask, like a plain ``open``. On any
    failure it is removed and ``path`` is left as it was.

    Raises:
        OSError: writing or replacing failed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _write_run_sidecar(path: Path, run: dict[str, Any]) -> None:
    sidecar = run_sidecar_path(path)
    try:
        _atomic_write(sidecar, [_json_bytes(_finite_json(run), indent=2), b"\n"])
    except OSError as exc:
        raise WwtsError(f"cannot write run settings to {sidecar}: {exc}") from exc


def _truncate(path: Path, size: int) -> None:
    if path.stat().st_size != size:
        with open(path, "r+b") as fh:
            fh.truncate(size)
            fh.flush()
            os.fsync(fh.fileno())


# ----------------------------------------------------------------------------------------------
# Writers


class ResultWriter:
    """Appends records to one output file, durably, one ``write`` call per mini-batch.

    Use ``open_writer`` to get one; use it as a context manager or call ``close``.

    Attributes:
        path: the output file.
        record_type: the record class every written record must be an instance of.
        run: the run section; ``close(run)`` merges the final statistics into it.
        closed: True after ``close`` or ``abort``.
        failed: True after a ``write`` failed (disk full...): the file holds exactly the records
            of the earlier calls, later calls are refused, and ``close`` publishes nothing.
        written: records written (and fsync-ed) by this writer; ``written_errors``: how many of
            them hold an error. A batch whose write failed is not counted.
    """

    format: str = ""

    def __init__(self, path: Path, record_type: type[ImageRecord], run: dict[str, Any]) -> None:
        self.path = Path(path)
        self.record_type = record_type
        self.run: dict[str, Any] = dict(run)
        self.closed = False
        self.failed = False
        self.written = 0
        self.written_errors = 0
        self._fh: io.RawIOBase | None = None

    @property
    def data_path(self) -> Path:
        """The file the records are appended to (``OUT.partial.jsonl`` for ``.json``)."""
        return self.path

    @property
    def saved_path(self) -> Path:
        """Where the records are now: ``path``, or for a ``.json`` run that was not published
        (write failure, publish failure) its ``OUT.partial.jsonl``."""
        return self.path

    # subclasses: encode records, and what closing means
    def _encode(self, records: Sequence[ImageRecord]) -> bytes:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def write(self, records: Sequence[ImageRecord]) -> None:
        """Append ``records`` in the given order, then flush and fsync the file.

        A record holding a NaN or infinity is written as an error record (see ``_finite_record``).
        When the write fails, the file is cut back to the records of the earlier calls.

        Raises:
            TypeError: a record is not an instance of ``record_type``.
            WwtsError: the writer is closed or failed before, or the disk write failed (disk
                full...); the message names the file that holds the records so far.
        """
        if self.closed or self.failed or self._fh is None:
            raise WwtsError(f"{self.data_path}: writer is closed")
        if not records:
            return
        for record in records:
            if not isinstance(record, self.record_type):
                raise TypeError(
                    f"{self.path}: expected {self.record_type.__name__} records, got {type(record).__name__}"
                )
        records = [_finite_record(r) for r in records]
        data = self._encode(records)
        fd = self._fh.fileno()
        size = os.fstat(fd).st_size
        try:
            _write_all(self._fh, data)
            os.fsync(fd)
        except OSError as exc:
            self.failed = True
            with contextlib.suppress(OSError):  # drop a torn batch; --resume would cut it anyway
                os.ftruncate(fd, size)
            raise WwtsError(f"cannot write results to {self.data_path}: {describe(exc)}") from exc
        self.written += len(records)
        self.written_errors += sum(1 for r in records if r.error)

    def close(self, run: dict[str, Any] | None = None) -> None:
        """Finish the output: merge ``run`` into the run section and store it; publish ``.json``.

        After a failed ``write`` this is ``abort()``: nothing is published. Calling it again does
        nothing.

        Raises:
            WwtsError: the run section or the final ``.json`` could not be written; every record
                written so far is still on disk (see the module doc).
        """
        if self.closed:
            return
        if self.failed:
            self.abort()
            return
        if run:
            self.run.update(run)
        self.closed = True
        self._close_handle()
        self._finish()

    def abort(self) -> None:
        """Close the file without finishing: a ``.json`` output is not published, its partial
        records stay for ``--resume``. Records already written are on disk. Idempotent."""
        self.closed = True
        self._close_handle()

    def _close_handle(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError as exc:
                raise WwtsError(f"cannot write results to {self.data_path}: {exc}") from exc

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """``close()`` on success; ``abort()`` when the block raised (nothing is published)."""
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self.format} {str(self.path)!r} {state}>"


def _write_all(fh: io.RawIOBase, data: bytes) -> None:
    """Write all of ``data`` to an unbuffered file (a raw write may take only part of it).

    Raises:
        OSError: the write failed (``ENOSPC`` when the disk is full...).
    """
    view = memoryview(data)
    while view:
        n = fh.write(view)
        if not n:
            raise OSError(errno.EIO, "the file took no bytes")
        view = view[n:]


def _open_data(path: Path, mode: str) -> io.RawIOBase:
    """``open(path, mode)`` unbuffered: ``"xb"`` creates (fails if the file exists, so the check
    and the creation are one step), ``"wb"`` truncates, ``"ab"`` appends."""
    return open(path, mode, buffering=0)


class _JsonlWriter(ResultWriter):
    """JSON Lines: one ``record.to_dict()`` object per line, UTF-8, ``ensure_ascii=False``."""

    format = "jsonl"

    def _open(self, data_path: Path, *, resume: bool, overwrite: bool) -> None:
        if resume and data_path.exists():
            _, good_end = _scan_jsonl(data_path)
            _truncate(data_path, good_end)
            self._fh = _open_data(data_path, "ab")
        else:
            self._fh = _open_data(data_path, "wb" if overwrite else "xb")

    def _encode(self, records: Sequence[ImageRecord]) -> bytes:
        return b"".join(_record_line(r.to_dict()) for r in records)

    def _finish(self) -> None:
        _write_run_sidecar(self.path, self.run)


class _CsvWriter(ResultWriter):
    """CSV with a BOM, header ``record_type.csv_fields``, escaped cells (see the module doc)."""

    format = "csv"

    def _open(self, *, resume: bool, overwrite: bool) -> None:
        fields = self.record_type.csv_fields
        mode = "wb" if overwrite else "xb"
        if resume and self.path.exists():
            has_header, _, good_end = _scan_csv(self.path, fields)
            if has_header:
                _truncate(self.path, good_end)
                self._fh = _open_data(self.path, "ab")
                return
            mode = "wb"  # an empty file, or only a torn header: start it again
        self._fh = _open_data(self.path, mode)
        _write_all(self._fh, _BOM + _csv_bytes([fields]))
        os.fsync(self._fh.fileno())

    def _encode(self, records: Sequence[ImageRecord]) -> bytes:
        fields = self.record_type.csv_fields
        rows = [r.csv_row() for r in records]
        return _csv_bytes([[row[f] for f in fields] for row in rows])

    def _finish(self) -> None:
        _write_run_sidecar(self.path, self.run)


class _JsonWriter(_JsonlWriter):
    """One JSON document, built from ``OUT.partial.jsonl`` and published atomically at close."""

    format = "json"

    @property
    def partial(self) -> Path:
        return partial_path(self.path)

    @property
    def data_path(self) -> Path:
        return self.partial

    @property
    def saved_path(self) -> Path:
        return self.partial if self.partial.exists() else self.path

    def _open_json(self, *, resume: bool, overwrite: bool) -> None:
        partial = self.partial
        if resume and partial.exists():
            self._open(partial, resume=True, overwrite=False)  # an unfinished run: its partial file is the truth
            _write_run_sidecar(self.path, self.run)
            return
        carried = _read_final_json(self.path)[1] if resume and self.path.exists() else None
        # The run section goes first, so a partial file never appears without it.
        _write_run_sidecar(self.path, self.run)
        if carried is not None:
            # Carry the published records over; the partial file appears only when complete.
            _atomic_write(partial, (_record_line(r) for r in carried))
        self._open(partial, resume=carried is not None, overwrite=overwrite)

    def _final_chunks(self) -> Iterator[bytes]:
        def lines() -> Iterator[bytes]:
            with open(self.partial, "rb") as fh:
                for line in fh:
                    if line.strip():
                        yield line.rstrip(b"\r\n")

        return _final_json_chunks(self.run, lines())

    def _finish(self) -> None:
        try:
            _atomic_write(self.path, self._final_chunks())
        except OSError as exc:
            raise WwtsError(
                f"could not publish {self.path}: {exc}; the results so far are kept in "
                f"{self.partial} (rerun with --resume to finish)"
            ) from exc
        for leftover in (self.partial, run_sidecar_path(self.path)):
            try:
                leftover.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise WwtsError(
                    f"{self.path} is complete, but {leftover} could not be removed: {exc}"
                ) from exc


def open_writer(
    path: Path,
    record_type: type[ImageRecord],
    run: dict[str, Any],
    *,
    overwrite: bool = False,
    resume: bool = False,
) -> ResultWriter:
    """Open the writer for ``path`` (format from its extension) and store the run section.

    Args:
        path: output file; its folder is created if missing. Only one run may write it at a
            time: the CLI holds ``lock_output(path)`` around the whole run, so the existence
            check here and the creation of the file are one step for other wwts runs; a file
            created meanwhile by another program is still refused (exclusive create, ``"xb"``).
        record_type: the record class of the run (``ClassifyResult`` / ``CaptionResult``).
        run: the run section (model, device, dtype, batch_size, labels / prompt...); ``close``
            merges the final one into it.
        overwrite: replace an existing output. ``.csv`` / ``.jsonl`` are truncated now; an
            existing ``.json`` stays in place until the new one is published.
        resume: append to an existing output (a torn last line/row is cut off first); for
            ``.json`` the existing records are carried into the new file. The caller filters out
            the images already done (see ``read_existing``). Without an existing output it is a
            normal fresh start.

    Returns:
        An open ``ResultWriter``.

    Raises:
        UsageError: bad extension, ``overwrite`` together with ``resume``, the path is a folder,
            or the output (for ``.json`` also an unfinished ``OUT.partial.jsonl``) exists and
            neither ``overwrite`` nor ``resume`` is given; also a CSV to resume whose header does
            not match ``record_type``.
        OutputError: the file or its folder cannot be created, or the existing file is corrupt
            (exit code 2).
    """
    path = Path(path)
    fmt = output_format(path)
    if overwrite and resume:
        raise UsageError("--overwrite and --resume cannot be used together")
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; give a file name ending in " + ", ".join(FORMATS))
    existing = [p for p in (path, partial_path(path) if fmt == "json" else None) if p and p.exists()]
    if existing and not (overwrite or resume):
        raise _exists_error(existing[0])
    _make_parent(path)
    writer: ResultWriter = {"csv": _CsvWriter, "jsonl": _JsonlWriter, "json": _JsonWriter}[fmt](
        path, record_type, run
    )
    try:
        if isinstance(writer, _JsonWriter):
            writer._open_json(resume=resume, overwrite=overwrite)
        else:
            # The data file first: a CSV to resume is checked before the old settings are replaced.
            if isinstance(writer, _CsvWriter):
                writer._open(resume=resume, overwrite=overwrite)
            else:
                writer._open(path, resume=resume, overwrite=overwrite)
            _write_run_sidecar(path, writer.run)
    except BaseException as exc:
        writer.abort()
        if isinstance(exc, FileExistsError):
            raise _exists_error(Path(exc.filename or path)) from None
        if isinstance(exc, OSError):
            raise OutputError(f"cannot open output {path}: {describe(exc)}") from exc
        raise
    return writer


def drop_records(path: Path, record_type: type[ImageRecord], paths: set[str]) -> int:
    """Rewrite the output without the records whose ``path`` is in ``paths`` (``--retry-failed``).

    The rewrite is atomic (temporary file + ``os.replace``); kept CSV rows and JSONL lines are
    copied byte for byte, a torn tail is dropped. For ``.json`` the unfinished
    ``OUT.partial.jsonl`` is rewritten when it exists, else ``OUT`` itself. Afterwards reopen the
    output with ``open_writer(..., resume=True)`` and process those images again.

    Args:
        path: the output file.
        record_type: the record class of the run.
        paths: record paths to remove, compared with the records' ``path`` strings.

    Returns:
        The number of records removed (0 leaves the file untouched, as does a missing output).

    Raises:
        UsageError: bad extension or CSV header mismatch.
        OutputError: unreadable, corrupt or unwritable file (exit code 2).
    """
    path = Path(path)
    fmt = output_format(path)
    target = path
    if fmt == "json" and partial_path(path).exists():
        target, fmt = partial_path(path), "jsonl"
    if not target.exists():
        return 0
    chunks: list[bytes]
    if fmt == "json":
        run, records = _read_final_json(target)
        kept_records = [r for r in records if r.get("path") not in paths]
        dropped = len(records) - len(kept_records)
        chunks = list(_final_json_chunks(run or {}, (_record_line(r)[:-1] for r in kept_records)))
    else:
        data = _read_bytes(target)
        if fmt == "jsonl":
            rows, _ = _scan_jsonl(target)
            kept = [(s, e) for rec, s, e in rows if rec.get("path") not in paths]
            dropped = len(rows) - len(kept)
            chunks = [data[s:e] for s, e in kept]
        else:
            fields = record_type.csv_fields
            _, csv_rows, _ = _scan_csv(target, fields)
            i_path = list(fields).index("path")
            kept = [(s, e) for cells, s, e in csv_rows if _unescape_cell(cells[i_path]) not in paths]
            dropped = len(csv_rows) - len(kept)
            chunks = [_BOM + _csv_bytes([fields])] + [data[s:e] for s, e in kept]
    if dropped == 0:
        return 0
    try:
        _atomic_write(target, chunks)
    except OSError as exc:
        raise OutputError(f"cannot rewrite {target}: {exc}") from exc
    return dropped


# ----------------------------------------------------------------------------------------------
# Before the run: check the output, lock it, and find the images still to do


def _exists_error(path: Path) -> UsageError:
    return UsageError(
        f"output {path} already exists; pass --overwrite to replace it or --resume to continue it"
    )


def _make_parent(path: Path) -> None:
    """Create the output's folder (and its parents) when missing.

    Raises:
        OutputError: it cannot be created (a parent is a file, read-only file system...).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder of --out {path}: {describe(exc)}") from None


def _command_line() -> str:
    return " ".join([Path(sys.argv[0]).name if sys.argv else "wwts", *sys.argv[1:]])


class OutputLock:
    """An exclusive, non-blocking lock on one output file, held for a whole run.

    ``OUT.lock`` is locked with ``filelock.FileLock`` (``flock`` on POSIX, ``msvcrt`` on
    Windows; the operating system drops the lock when the process dies, so a crash never leaves a
    stale lock). Right after taking it the holder writes ``OUT.lock.info`` (JSON: ``pid``,
    ``host``, ``started``, ``command``), which a second run reads back to say who holds the lock.
    ``release`` removes both files while still holding the lock: a run that opened the old
    ``OUT.lock`` just before gets a deleted file, which filelock (>= 3.20.4) refuses
    (``st_nlink == 0``), and it tries again on the new one.

    Use ``lock_output``; an ``OutputLock`` is a context manager that releases on exit.
    """

    def __init__(self, path: Path, command: str | None = None) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.info_path = self.path.with_name(self.path.name + ".lock.info")
        self.command = command or _command_line()
        self._lock: Any = None

    @property
    def held(self) -> bool:
        """True between ``acquire`` and ``release``."""
        return self._lock is not None

    def acquire(self) -> None:
        """Take the lock at once (timeout 0) and write the holder's details.

        Raises:
            OutputError: another run holds it (the message names its pid, host, start time and
                command), or the lock file cannot be created next to the output (read-only file
                system, no permission...).
        """
        from filelock import FileLock, Timeout

        for attempt in range(3):
            lock = FileLock(str(self.lock_path), timeout=0)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                if self.lock_path.exists():
                    raise OutputError(self._held_message()) from None
                if attempt < 2:
                    continue  # its holder was just removing it: try again on a new file
                self._raise_cannot_create(None)
            except OSError as exc:
                self._raise_cannot_create(exc)
            break
        self._lock = lock
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": self.command}
        try:
            _atomic_write(self.info_path, [_json_bytes(info, indent=2), b"\n"])
        except OSError as exc:
            self.release()
            self._raise_cannot_create(exc)

    def _raise_cannot_create(self, exc: OSError | None) -> typing.NoReturn:
        if exc is None:  # filelock gave up without saying why: ask the file system
            try:
                os.close(os.open(self.lock_path, os.O_WRONLY | os.O_CREAT, 0o666))
                os.unlink(self.lock_path)
                exc = OSError(errno.EAGAIN, "the lock file keeps disappearing")
            except OSError as probe:
                exc = probe
        raise OutputError(
            f"cannot write next to --out {self.path} (the lock file {self.lock_path.name} cannot "
            f"be created): {describe(exc)}"
        ) from None

    def _held_message(self) -> str:
        for _ in range(20):  # the holder writes its details just after taking the lock
            if self.info_path.exists() or not self.lock_path.exists():
                break
            time.sleep(0.05)
        try:
            info = json.loads(self.info_path.read_bytes().decode("utf-8"))
            who = (f"pid {info['pid']} on {info['host']}, started {info['started']}: "
                   f"{info['command']}")
        except (OSError, ValueError, KeyError, TypeError):
            who = f"no details: {self.info_path.name} is missing or unreadable"
        return (f"--out {self.path} is being written by another wwts run ({who}); wait for it to "
                "finish, or choose another --out")

    def release(self) -> None:
        """Remove ``OUT.lock.info`` and ``OUT.lock``, then release. Idempotent; never raises."""
        lock, self._lock = self._lock, None
        if lock is None:
            return
        for leftover in (self.info_path, self.lock_path):
            with contextlib.suppress(OSError):  # Windows: the open lock file cannot be removed
                leftover.unlink()
        with contextlib.suppress(Exception):
            lock.release()

    def __enter__(self) -> OutputLock:
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_output(
    path: Path | None,
    *,
    inputs: Iterable[Path] = (),
    overwrite: bool = False,
    resume: bool = False,
    command: str | None = None,
) -> contextlib.AbstractContextManager[Any]:
    """Check that ``path`` can be written and lock it, before the model is loaded.

    In order: the extension (``output_format``), that it is not one of the ``inputs`` image
    files, not a folder; its folder is created when missing; ``OUT.lock`` is taken (see
    ``OutputLock``); then, under the lock, an existing output without ``overwrite`` / ``resume``
    is refused. Use the result as ``with lock_output(...):`` around the whole run.

    Args:
        path: the ``--out`` file, or ``None`` (no output: a context that does nothing).
        inputs: the paths given on the command line.
        overwrite, resume: as given (``--retry-failed`` counts as ``resume``).
        command: the command line written for other runs to read (default: ``sys.argv``).

    Returns:
        The held ``OutputLock`` (released by ``with``), or ``contextlib.nullcontext()``.

    Raises:
        UsageError: bad extension, ``path`` is an input image or a folder, or it exists and
            neither ``overwrite`` nor ``resume`` is given (exit code 2).
        OutputError: its folder cannot be created or written, or another run holds the lock
            (exit code 2).
    """
    if path is None:
        return contextlib.nullcontext()
    path = Path(path)
    fmt = output_format(path)
    resolved = path.resolve()
    if any(Path(p).is_file() and Path(p).resolve() == resolved for p in inputs):
        raise UsageError(f"--out {path} is one of the input images")
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; give a file name ending in " + ", ".join(FORMATS))
    _make_parent(path)
    lock = OutputLock(path, command)
    lock.acquire()
    existing = [p for p in (path, partial_path(path) if fmt == "json" else None) if p and p.exists()]
    if existing and not (overwrite or resume):
        lock.release()
        raise _exists_error(existing[0])
    return lock


def _same_file_key(path: str | os.PathLike[str]) -> str:
    """The absolute path with symbolic links and ``..`` resolved: one key for every spelling of
    a file (``ex20/a.jpg``, ``./ex20/a.jpg``, ``$PWD/ex20/a.jpg``, a link to it)."""
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        resolved = Path(os.path.abspath(path))
    return os.path.normcase(str(resolved))


def pending_paths(found: Iterable[Path], done: Iterable[str]) -> list[Path]:
    """The images of ``found`` that have no record in ``done`` yet, each at most once (``--resume``).

    A file is recognised under any spelling of its path (``_same_file_key``), so a run over
    ``ex20`` resumed as ``$PWD/ex20`` skips what is done, and a file named twice is taken once.
    Relative record paths are resolved against the current folder: resume from the folder the
    run started in, or give absolute paths.

    Args:
        found: the images discovered now, in processing order.
        done: the ``path`` strings of the records already in the output.

    Returns:
        The paths still to process, in ``found`` order.
    """
    done_keys = {_same_file_key(p) for p in done}
    pending: list[Path] = []
    for p in found:
        key = _same_file_key(p)
        if key not in done_keys:
            done_keys.add(key)
            pending.append(p)
    return pending
