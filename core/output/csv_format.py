"""CSV: cell escapes, the ``top_k`` text, and reading a CSV output back.

(Named ``csv_format`` rather than ``csv`` so that it cannot be mistaken for, or shadow, the
standard library's ``csv`` module.)

UTF-8 with a BOM so that Excel detects the encoding, ``\\r\\n`` row ends (RFC 4180), columns
``record_type.csv_fields``, cells from ``record.csv_row()``. Two reversible cell escapes, undone by
``unescape_cell`` (``read_existing``):

- lone surrogates are written as ``\\uXXXX`` (lower-case hex, like ``backslashreplace``); a
  backslash in the original text that is followed by ``uXXXX`` (a surrogate code) or ``x5c`` is
  itself written as ``\\x5c`` so the escape can be undone without ambiguity;
- formula injection: a cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return
  gets a leading ``'`` so spreadsheets show it as text instead of running it (OWASP, "CSV
  Injection", https://owasp.org/www-community/attacks/CSV_Injection). Plain numbers (``-0.5``)
  are left alone. A cell that itself starts with ``'`` also gets one more, so reading strips
  exactly one leading ``'`` from any cell that has it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import re
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .paths import read_bytes
from .records import ImageRecord

BOM = b"\xef\xbb\xbf"
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


def escape_cell(text: str) -> str:
    """Make one CSV cell valid UTF-8 and formula-safe (both reversible, see the module doc)."""
    text = _CSV_ESCAPE_RE.sub(
        lambda m: "\\x5c" if m.group() == "\\" else f"\\u{ord(m.group()):04x}", text
    )
    if text.startswith("'") or (text.startswith(_FORMULA_STARTS) and not _NUMBER_RE.fullmatch(text)):
        text = "'" + text
    return text


def unescape_cell(text: str) -> str:
    """Inverse of ``escape_cell``."""
    if text.startswith("'"):
        text = text[1:]
    return _CSV_UNESCAPE_RE.sub(
        lambda m: chr(int(m.group(1), 16)) if m.group(1) else "\\", text
    )


def csv_bytes(rows: Iterable[Sequence[str]]) -> bytes:
    """CSV rows (``\\r\\n`` ends, every cell escaped) as UTF-8, without a BOM."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    for row in rows:
        writer.writerow([escape_cell(cell) for cell in row])
    return buf.getvalue().encode("utf-8")


def csv_header(fields: Sequence[str]) -> bytes:
    """The start of a CSV output: the BOM and the header row ``fields``."""
    return BOM + csv_bytes([fields])


def _parse_top_k(text: str, where: str) -> list[dict[str, Any]]:
    """``"人:0.9120;车:0.0510"`` → ``[{"label": "人", "score": 0.912}, ...]``.

    Raises:
        UsageError: the cell is not a list of ``label:score`` items.
    """
    items: list[dict[str, Any]] = []
    pos = 0
    while pos < len(text):
        m = _TOP_K_ITEM_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise UsageError(f"{where}: cannot read top_k cell {text!r} (expected 人:0.9120;车:0.0510)")
        items.append({"label": m.group(1), "score": float(m.group(2))})
        pos = m.end()
    return items


def _field_kinds(record_type: type[ImageRecord]) -> dict[str, str]:
    """Field name → ``"str"``, ``"int"``, ``"float"``, ``"list"`` or ``"list|None"``, from the type hints."""
    kinds: dict[str, str] = {}
    for name, hint in typing.get_type_hints(record_type).items():
        if typing.get_origin(hint) is typing.ClassVar:
            continue
        args = typing.get_args(hint) or (hint,)
        if typing.get_origin(hint) is list:
            kinds[name] = "list"
        elif any(typing.get_origin(a) is list for a in args):
            kinds[name] = "list|None"  # e.g. labels: an empty cell reads as None
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
        UsageError: a number or top_k cell that cannot be parsed.
    """
    ok = cells.get("error", "") == ""
    out: dict[str, Any] = {}
    for name, text in cells.items():
        kind = kinds.get(name, "str")
        try:
            if kind in ("list", "list|None"):
                out[name] = _parse_top_k(text, where) if text else ([] if kind == "list" else None)
            elif text == "":
                out[name] = "" if (ok and kind == "str" and name != "error") else None
            elif kind == "int":
                out[name] = int(text)
            elif kind == "float":
                out[name] = float(text)
            else:
                out[name] = text
        except ValueError:
            raise UsageError(f"{where}: column {name!r} is not a number: {text!r}") from None
    return out


def _check_header(path: Path, header: list[str], fields: Sequence[str]) -> None:
    """Raises UsageError when the (raw) ``header`` cells are not ``fields``."""
    if [unescape_cell(c) for c in header] != list(fields):
        raise UsageError(
            f"{path} has columns {','.join(header)}; expected {','.join(fields)}"
            " (was it written by another task?)"
        )


def scan_csv(
    path: Path, fields: Sequence[str]
) -> tuple[bool, list[tuple[list[str], int, int]], int]:
    """Read a CSV output written by this module, tolerating a torn tail.

    Returns:
        ``(has_header, rows, good_end)``: rows are ``(raw cells, start byte, end byte)`` after the
        header; ``good_end`` is the byte offset after the last complete row (a row must end with a
        line break; a torn last row is dropped). ``has_header`` is False for an empty file or one
        whose header line itself is torn.

    Raises:
        UsageError: the file cannot be read, a row other than the last is malformed, or the
            header is not ``fields`` (the file was written by another task).
    """
    data = read_bytes(path)
    base = len(BOM) if data.startswith(BOM) else 0
    lines = list(io.StringIO(data[base:].decode("utf-8", "surrogateescape"), newline=""))
    # ends[n]: the byte offset after the first n lines (csv.reader's line_num: lines it has read)
    ends = list(itertools.accumulate((len(line.encode("utf-8", "surrogateescape")) for line in lines),
                                     initial=base))
    reader = csv.reader(lines, strict=True)
    header: list[str] | None = None
    rows: list[tuple[list[str], int, int]] = []
    good_end = start = base
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if ends[reader.line_num] >= len(data):  # unterminated quote at the end: torn
                break
            raise UsageError(f"{path}: malformed CSV near line {reader.line_num}: {exc}") from None
        end = ends[reader.line_num]
        at_end = end >= len(data)
        if at_end and not lines[reader.line_num - 1].endswith(("\n", "\r")):
            break  # last row without its line break: torn
        if header is None:
            header = row
            _check_header(path, header, fields)
        elif row:
            if len(row) != len(fields):
                if at_end:
                    break
                raise UsageError(
                    f"{path}: line {reader.line_num} has {len(row)} cells, expected {len(fields)}"
                )
            rows.append((row, start, end))
        good_end = start = end
    return header is not None, rows, good_end


def read_csv_records(path: Path, record_type: type[ImageRecord]) -> list[dict[str, Any]]:
    """The records of a CSV output as ``to_dict()``-shaped dicts (escapes undone, numbers as
    written; fields the CSV has no column for, such as ``frames`` and ``note``, are ``None``).

    Raises:
        UsageError: unreadable or corrupt file, or a header that does not match ``record_type``.
    """
    fields = record_type.csv_fields
    kinds = _field_kinds(record_type)
    _, csv_rows, _ = scan_csv(path, fields)
    records = [
        _csv_record(dict(zip(fields, (unescape_cell(c) for c in cells))), kinds, f"{path}")
        for cells, _, _ in csv_rows
    ]
    missing = [f.name for f in dataclasses.fields(record_type) if f.name not in fields]
    for record in records:
        for name in missing:
            record.setdefault(name, None)
    return records
