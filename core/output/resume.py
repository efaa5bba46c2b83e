"""``--resume`` and ``--retry-failed``: read an output back, find the images still to do, check
the stored run settings, and drop the records of images to retry.

``--retry-failed`` uses ``drop_records``: it rewrites the output (atomically) without the records
of the given paths; the caller then reopens it with ``open_writer(..., resume=True)`` and
processes those images again, so every image ends up exactly once (retried images move to the
end). ``plan_resume`` does the reading, checking and filtering in one call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..atomic import atomic_write
from .csv_format import csv_header, read_csv_records, scan_csv, unescape_cell
from .json_format import final_json_chunks, read_final_json, record_line, scan_jsonl
from .paths import output_format, partial_path, read_bytes
from .records import ImageRecord
from .run_settings import read_run_sidecar


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
        UsageError: bad extension, a CSV whose header does not match ``record_type``, or an
            unreadable or corrupt file (exit code 2).
    """
    path = Path(path)
    fmt = output_format(path)
    if fmt == "json":
        partial = partial_path(path)
        if partial.exists():
            rows, _ = scan_jsonl(partial)
            return read_run_sidecar(path), [r for r, _, _ in rows]
        if path.exists():
            return read_final_json(path)
        return None, []
    if not path.exists():
        return None, []
    if fmt == "jsonl":
        rows, _ = scan_jsonl(path)
        return read_run_sidecar(path), [r for r, _, _ in rows]
    records = read_csv_records(path, record_type)
    return read_run_sidecar(path), records


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


def _kept_chunks(target: Path, fmt: str, record_type: type[ImageRecord],
                 paths: set[str]) -> tuple[list[bytes], int]:
    """The bytes of ``target`` (format ``fmt``) without the records of ``paths``, and how many
    records that drops. Kept CSV rows and JSONL lines are copied byte for byte."""
    if fmt == "json":
        run, records = read_final_json(target)
        kept_records = [r for r in records if r.get("path") not in paths]
        lines = (record_line(r)[:-1] for r in kept_records)
        return list(final_json_chunks(run or {}, lines)), len(records) - len(kept_records)
    data = read_bytes(target)
    if fmt == "jsonl":
        rows, _ = scan_jsonl(target)
        kept = [(s, e) for rec, s, e in rows if rec.get("path") not in paths]
        return [data[s:e] for s, e in kept], len(rows) - len(kept)
    fields = record_type.csv_fields
    _, csv_rows, _ = scan_csv(target, fields)
    i_path = list(fields).index("path")
    kept = [(s, e) for cells, s, e in csv_rows if unescape_cell(cells[i_path]) not in paths]
    return [csv_header(fields)] + [data[s:e] for s, e in kept], len(csv_rows) - len(kept)


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
        UsageError: bad extension, CSV header mismatch, or an unreadable, corrupt or
            unwritable file (exit code 2).
    """
    path = Path(path)
    fmt = output_format(path)
    target = path
    if fmt == "json" and partial_path(path).exists():
        target, fmt = partial_path(path), "jsonl"
    if not target.exists():
        return 0
    chunks, dropped = _kept_chunks(target, fmt, record_type, paths)
    if dropped == 0:
        return 0
    try:
        atomic_write(target, chunks)
    except OSError as exc:
        raise UsageError(f"cannot rewrite {target}: {exc}") from exc
    return dropped


log = logging.getLogger("wwts")

#: Run settings that must match for --resume to append to an existing output.
RESUME_KEYS = ("task", "model", "dtype", "quantize", "labels", "prompt", "top_k", "max_new_tokens", "num_beams",
               "vocab", "multi_label", "threshold", "min_score", "other_label", "backend")


def check_settings(out: Path, old: dict | None, new: dict) -> None:
    """Refuse to append to ``out`` when its stored run settings differ from this run's (the
    ``RESUME_KEYS`` present in both); nothing to compare when ``old`` is ``None``. A key the file
    does not hold was not recorded by the wwts that wrote it (``vocab``, ``multi_label`` ... came
    later), so it cannot differ.

    Raises:
        UsageError: naming each setting that differs.
    """
    diff = [f"{k}: {old.get(k)!r} in the file, {new.get(k)!r} now"
            for k in RESUME_KEYS if old is not None and k in new and k in old and old.get(k) != new.get(k)]
    if diff:
        raise UsageError(f"{out} was made with other settings ({'; '.join(diff)}): "
                         "use another --out, or --overwrite to start over")


@dataclass
class ResumePlan:
    """What a resumed run does.

    Attributes:
        paths: the images still to process, in discovery order (empty: nothing to do).
        old_run: the run section stored with the output, ``None`` when there is none.
        failed: the ``path`` strings of the error records in the output.
    """

    paths: list[Path]
    old_run: dict[str, Any] | None
    failed: set[str] = field(default_factory=set)


def plan_resume(out: Path, record_type: type[ImageRecord], found: Iterable[Path],
                settings: dict[str, Any], *, retry_failed: bool) -> ResumePlan:
    """Read the existing output ``out`` and plan the images still to do.

    Logs a warning (logger ``"wwts"``) when ``out`` holds records but no run-settings sidecar.
    Images whose record is an error count as pending when ``retry_failed`` is true.

    Args:
        out: the output file (it may not exist yet: everything is pending).
        record_type: the record class of the run.
        found: the images discovered now, in processing order.
        settings: this run's settings (compared on ``RESUME_KEYS``).
        retry_failed: process the images whose record is an error again.

    Raises:
        UsageError: the stored settings differ, bad extension, CSV header mismatch, or the
            existing output is unreadable or corrupt.
    """
    old_run, old_records = read_existing(out, record_type)
    if old_records and old_run is None:
        log.warning("%s has no run settings file next to it: cannot check that it was made "
                    "with the same model and labels", out)
    check_settings(out, old_run, settings)
    failed = {r["path"] for r in old_records if r.get("error")}
    # the same file under any spelling (./a.jpg, $PWD/a.jpg) counts as done
    paths = pending_paths(found, (r["path"] for r in old_records
                                  if not (retry_failed and r["path"] in failed)))
    return ResumePlan(paths=paths, old_run=old_run, failed=failed)
