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

Encodings:

* JSON / JSONL: UTF-8, ``ensure_ascii=False`` (Chinese stays readable). A path decoded from
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

import csv
import dataclasses
import io
import json
import os
import re
import typing
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from wwts.core.errors import UsageError, WwtsError
from wwts.core.results import ImageRecord

__all__ = [
    "FORMATS",
    "ResultWriter",
    "drop_records",
    "open_writer",
    "output_format",
    "partial_path",
    "read_existing",
    "run_sidecar_path",
]

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
    """UTF-8 JSON; lone surrogates become the JSON escape ``\\udcXX`` (reads back unchanged)."""
    text = json.dumps(obj, ensure_ascii=False, default=str, **kwargs)
    return text.encode("utf-8", "backslashreplace")


def _record_line(record: dict[str, Any]) -> bytes:
    return _json_bytes(record) + b"\n"


def _final_json_chunks(run: dict[str, Any], record_lines: Iterable[bytes]) -> Iterator[bytes]:
    """The published ``.json`` document: ``{"run": {...}, "results": [...]}``, one record a line."""
    yield b'{\n  "run": ' + _json_bytes(run, indent=2).replace(b"\n", b"\n  ") + b',\n  "results": ['
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
        WwtsError: the cell is not a list of ``label:score`` items.
    """
    items: list[dict[str, Any]] = []
    pos = 0
    while pos < len(text):
        m = _TOP_K_ITEM_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise WwtsError(f"{where}: cannot read top_k cell {text!r} (expected 人:0.9120;车:0.0510)")
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
        WwtsError: a number or top_k cell that cannot be parsed.
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
            raise WwtsError(f"{where}: column {name!r} is not a number: {text!r}") from None
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
        WwtsError: the file cannot be read, or a line other than the last is not a record.
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
                raise WwtsError(f"{path}: line {lineno} is not a result record ({exc})") from None
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
        WwtsError: the file cannot be read, or a row other than the last is malformed.
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
            raise WwtsError(f"{path}: malformed CSV near line {reader.line_num}: {exc}") from None
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
                raise WwtsError(
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
        raise WwtsError(f"cannot read {path}: {exc}") from None


def _read_json_file(path: Path) -> Any:
    try:
        return json.loads(_read_bytes(path).decode("utf-8-sig"))
    except ValueError as exc:
        raise WwtsError(f"{path} is not valid JSON: {exc}") from None


def _read_run_sidecar(path: Path) -> dict[str, Any] | None:
    sidecar = run_sidecar_path(path)
    if not sidecar.exists():
        return None
    run = _read_json_file(sidecar)
    if not isinstance(run, dict):
        raise WwtsError(f"{sidecar} does not hold a run section (a JSON object)")
    return run


def _read_final_json(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    doc = _read_json_file(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise WwtsError(f'{path} is not a wwts result file (expected {{"run": ..., "results": [...]}})')
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
        WwtsError: unreadable or corrupt file.
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
        _atomic_write(sidecar, [_json_bytes(run, indent=2), b"\n"])
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
    """

    format: str = ""

    def __init__(self, path: Path, record_type: type[ImageRecord], run: dict[str, Any]) -> None:
        self.path = Path(path)
        self.record_type = record_type
        self.run: dict[str, Any] = dict(run)
        self.closed = False
        self._fh: io.BufferedWriter | None = None

    # subclasses: encode records, and what closing means
    def _encode(self, records: Sequence[ImageRecord]) -> bytes:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def write(self, records: Sequence[ImageRecord]) -> None:
        """Append ``records`` in the given order, then flush and fsync the file.

        Raises:
            TypeError: a record is not an instance of ``record_type``.
            WwtsError: the writer is closed, or the disk write failed (disk full...).
        """
        if self.closed or self._fh is None:
            raise WwtsError(f"{self.path}: writer is closed")
        if not records:
            return
        for record in records:
            if not isinstance(record, self.record_type):
                raise TypeError(
                    f"{self.path}: expected {self.record_type.__name__} records, got {type(record).__name__}"
                )
        data = self._encode(records)
        try:
            self._fh.write(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise WwtsError(f"cannot write results to {self.path}: {exc}") from exc

    def close(self, run: dict[str, Any] | None = None) -> None:
        """Finish the output: merge ``run`` into the run section and store it; publish ``.json``.

        Calling it again does nothing.

        Raises:
            WwtsError: the run section or the final ``.json`` could not be written; every record
                written so far is still on disk (see the module doc).
        """
        if self.closed:
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
                raise WwtsError(f"cannot write results to {self.path}: {exc}") from exc

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


class _JsonlWriter(ResultWriter):
    """JSON Lines: one ``record.to_dict()`` object per line, UTF-8, ``ensure_ascii=False``."""

    format = "jsonl"

    def _open(self, data_path: Path, *, resume: bool) -> None:
        if resume and data_path.exists():
            _, good_end = _scan_jsonl(data_path)
            _truncate(data_path, good_end)
            self._fh = open(data_path, "ab")
        else:
            self._fh = open(data_path, "wb")

    def _encode(self, records: Sequence[ImageRecord]) -> bytes:
        return b"".join(_record_line(r.to_dict()) for r in records)

    def _finish(self) -> None:
        _write_run_sidecar(self.path, self.run)


class _CsvWriter(ResultWriter):
    """CSV with a BOM, header ``record_type.csv_fields``, escaped cells (see the module doc)."""

    format = "csv"

    def _open(self, *, resume: bool) -> None:
        fields = self.record_type.csv_fields
        if resume and self.path.exists():
            has_header, _, good_end = _scan_csv(self.path, fields)
            if has_header:
                _truncate(self.path, good_end)
                self._fh = open(self.path, "ab")
                return
        self._fh = open(self.path, "wb")
        self._fh.write(_BOM + _csv_bytes([fields]))
        self._fh.flush()
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

    def _open_json(self, *, resume: bool) -> None:
        partial = self.partial
        if resume and partial.exists():
            self._open(partial, resume=True)  # an unfinished run: its partial file is the truth
            _write_run_sidecar(self.path, self.run)
            return
        carried = _read_final_json(self.path)[1] if resume and self.path.exists() else None
        # The run section goes first, so a partial file never appears without it.
        _write_run_sidecar(self.path, self.run)
        if carried is not None:
            # Carry the published records over; the partial file appears only when complete.
            _atomic_write(partial, (_record_line(r) for r in carried))
        self._open(partial, resume=carried is not None)

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
        path: output file; its folder is created if missing.
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
        WwtsError: the file or its folder cannot be created, or the existing file is corrupt.
    """
    path = Path(path)
    fmt = output_format(path)
    if overwrite and resume:
        raise UsageError("--overwrite and --resume cannot be used together")
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; give a file name ending in " + ", ".join(FORMATS))
    existing = [p for p in (path, partial_path(path) if fmt == "json" else None) if p and p.exists()]
    if existing and not (overwrite or resume):
        raise UsageError(
            f"output {existing[0]} already exists; pass --overwrite to replace it or --resume to continue it"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WwtsError(f"cannot create the folder for {path}: {exc}") from exc
    writer: ResultWriter = {"csv": _CsvWriter, "jsonl": _JsonlWriter, "json": _JsonWriter}[fmt](
        path, record_type, run
    )
    try:
        if isinstance(writer, _JsonWriter):
            writer._open_json(resume=resume)
        else:
            # The data file first: a CSV to resume is checked before the old settings are replaced.
            if isinstance(writer, _CsvWriter):
                writer._open(resume=resume)
            else:
                writer._open(path, resume=resume)
            _write_run_sidecar(path, writer.run)
    except BaseException as exc:
        writer.abort()
        if isinstance(exc, OSError):
            raise WwtsError(f"cannot open output {path}: {exc}") from exc
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
        WwtsError: unreadable, corrupt or unwritable file.
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
        chunks = list(_final_json_chunks(run or {}, (_json_bytes(r) for r in kept_records)))
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
        raise WwtsError(f"cannot rewrite {target}: {exc}") from exc
    return dropped
