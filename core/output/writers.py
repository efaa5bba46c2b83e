"""Result writers: a stream of per-image records → ``.csv``, ``.json`` or ``.jsonl`` on disk.

The format is chosen by the output file's extension (case-insensitive, see ``output_format``);
one ``ResultWriter(path, record_type, run, mode=...)`` serves the three, with mode ``"new"``,
``"overwrite"`` or ``"append"`` (``open_writer`` checks the output and picks the mode). They
differ in three places: how the data file is opened (a CSV's header; a ``.json``'s partial
file), how records are encoded (CSV rows, or one JSON object per line) and what closing does
(store the run section, or publish the ``.json`` document).
The CLI calls ``ResultWriter.write`` once per mini-batch the engine yields; every call appends the
records, flushes and ``os.fsync``-s them, so an interrupted run loses at most the batch in flight.

The run section is kept in ``OUT.run.json`` (see ``paths``). A ``.json`` output is built from
``OUT.partial.jsonl``: while it exists it is the complete truth: resuming copies the records of an
existing ``OUT`` into it first (atomically), and ``--overwrite`` starts it empty. At ``close()``
the final JSON ``{"run": {...}, "results": [...]}`` is written to a temporary file in the same
folder, fsync-ed and published with ``os.replace``; then the partial file and ``OUT.run.json``
are removed. If publishing fails, the old ``OUT`` (if any) is untouched, the partial file stays
and the error says to rerun with ``--resume``.

A failed ``write`` (disk full) cuts the data file back to the records of the earlier batches and
marks the writer failed: nothing more is written and a ``.json`` output is not published, so its
records are in ``OUT.partial.jsonl`` (``ResultWriter.saved_path``); ``ResultWriter.written``
counts the records really written. This module does not import torch.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError, WwtsError, describe
from ..atomic import atomic_write, truncate
from .csv_format import csv_bytes, csv_header, scan_csv
from .json_format import final_json_chunks, finite_record, read_final_json, record_line, scan_jsonl
from .paths import (exists_error, existing_files, make_parent, not_a_folder,
                    output_format, partial_path, run_sidecar_path)
from .records import ImageRecord
from .run_settings import write_run_sidecar

#: How a writer opens its output: create it (refused when it exists), replace it, or continue it.
MODES = ("new", "overwrite", "append")


class ResultWriter:
    """Appends records to one output file, durably, one ``write`` call per mini-batch.

    Use ``open_writer`` to get one; use it as a context manager or call ``close``.

    Attributes:
        path: the output file.
        format: ``"csv"``, ``"json"`` or ``"jsonl"``, from the extension (``output_format``).
        record_type: the record class every written record must be an instance of.
        run: the run section; ``close(run)`` merges the final statistics into it.
        closed: True after ``close`` or ``abort``.
        failed: True after a ``write`` failed (disk full...): the file holds exactly the records
            of the earlier calls, later calls are refused, and ``close`` publishes nothing.
        written: records written (and fsync-ed) by this writer; ``written_errors``: how many of
            them hold an error. A batch whose write failed is not counted.
    """

    def __init__(self, path: Path, record_type: type[ImageRecord], run: dict[str, Any], *,
                 mode: str = "new") -> None:
        """Open the output and store the run section.

        Args:
            path: output file; its folder must exist.
            record_type: the record class of the run.
            run: the run section (model, device, dtype, batch_size, labels / prompt...).
            mode: ``"new"`` creates the file (exclusive create: refused when it exists);
                ``"overwrite"`` replaces it (``.csv`` / ``.jsonl`` are truncated now, an existing
                ``.json`` stays until the new one is published); ``"append"`` continues it (a
                torn last line/row is cut off first; ``.json`` carries its records over), or
                starts it when missing.

        Raises:
            ValueError: an unknown ``mode``.
            UsageError: an extension other than .csv/.json/.jsonl, the file exists in mode
                ``"new"``, a CSV to continue has other columns, the file cannot be created, or the
                existing file is corrupt.
            WwtsError: the run section cannot be stored.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.path = Path(path)
        self.format = output_format(self.path)
        self.record_type = record_type
        self.run: dict[str, Any] = dict(run)
        self.closed = False
        self.failed = False
        self.written = 0
        self.written_errors = 0
        self._fh: io.RawIOBase | None = None
        try:
            self._open(mode)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, FileExistsError):
                raise exists_error(Path(exc.filename or self.path)) from None
            if isinstance(exc, OSError):
                raise UsageError(f"cannot open output {self.path}: {describe(exc)}") from exc
            raise

    @property
    def data_path(self) -> Path:
        """The file the records are appended to (``OUT.partial.jsonl`` for ``.json``)."""
        return partial_path(self.path) if self.format == "json" else self.path

    @property
    def saved_path(self) -> Path:
        """Where the records are now: ``path``, or for a ``.json`` run that was not published
        (write failure, publish failure) its ``OUT.partial.jsonl``."""
        return self.data_path if self.data_path.exists() else self.path

    def _open(self, mode: str) -> None:
        """Open the data file (a CSV to resume is checked before the old settings are replaced),
        then store the run section; ``.json`` in its own order (``_open_json``)."""
        if self.format == "json":
            self._open_json(mode)
            return
        if self.format == "csv":
            self._open_rows(mode)
        else:
            self._open_lines(mode)
        write_run_sidecar(self.path, self.run)

    def _encode(self, records: Sequence[ImageRecord]) -> bytes:
        """CSV rows (columns ``record_type.csv_fields``, see ``csv_format``), or one
        ``record.to_dict()`` JSON object per line (UTF-8, ``ensure_ascii=False``)."""
        if self.format == "csv":
            fields = self.record_type.csv_fields
            rows = [r.csv_row() for r in records]
            return csv_bytes([[row[f] for f in fields] for row in rows])
        return b"".join(record_line(r.to_dict()) for r in records)

    def _finish(self) -> None:
        """Store the final run section; a ``.json`` output is published (``_publish``)."""
        if self.format == "json":
            self._publish()
        else:
            write_run_sidecar(self.path, self.run)

    def _open_lines(self, mode: str) -> None:
        """Open ``data_path`` for appending lines; ``"append"`` cuts a torn last line off first."""
        data_path = self.data_path
        if mode == "append" and data_path.exists():
            _, good_end = scan_jsonl(data_path)
            truncate(data_path, good_end)
            self._fh = _open_data(data_path, "ab")
        else:
            self._fh = _open_data(data_path, "wb" if mode == "overwrite" else "xb")

    def _open_rows(self, mode: str) -> None:
        """Open the CSV (BOM and header ``record_type.csv_fields`` first); ``"append"`` cuts a
        torn last row off first."""
        fields = self.record_type.csv_fields
        file_mode = "wb" if mode == "overwrite" else "xb"
        if mode == "append" and self.path.exists():
            has_header, _, good_end = scan_csv(self.path, fields)
            if has_header:
                truncate(self.path, good_end)
                self._fh = _open_data(self.path, "ab")
                return
            file_mode = "wb"  # an empty file, or only a torn header: start it again
        self._fh = _open_data(self.path, file_mode)
        _write_all(self._fh, csv_header(fields))
        os.fsync(self._fh.fileno())

    def _open_json(self, mode: str) -> None:
        """A ``.json`` output: the records go to ``OUT.partial.jsonl`` until ``_publish``."""
        partial = self.data_path
        if mode == "append" and partial.exists():
            self._open_lines("append")  # an unfinished run: its partial file is the truth
            write_run_sidecar(self.path, self.run)
            return
        carried = read_final_json(self.path)[1] if mode == "append" and self.path.exists() else None
        # The run section goes first, so a partial file never appears without it.
        write_run_sidecar(self.path, self.run)
        if carried is not None:
            # Carry the published records over; the partial file appears only when complete.
            atomic_write(partial, (record_line(r) for r in carried))
        self._open_lines("append" if carried is not None else mode)

    def _publish(self) -> None:
        """Write ``{"run": ..., "results": [...]}`` from the partial file atomically, then remove
        the partial file and ``OUT.run.json``."""
        partial = self.data_path

        def lines() -> Iterator[bytes]:
            with open(partial, "rb") as fh:
                for line in fh:
                    if line.strip():
                        yield line.rstrip(b"\r\n")

        try:
            atomic_write(self.path, final_json_chunks(self.run, lines()))
        except OSError as exc:
            raise WwtsError(
                f"could not publish {self.path}: {exc}; the results so far are kept in "
                f"{partial} (rerun with --resume to finish)"
            ) from exc
        for leftover in (partial, run_sidecar_path(self.path)):
            try:
                leftover.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise WwtsError(
                    f"{self.path} is complete, but {leftover} could not be removed: {exc}"
                ) from exc

    def write(self, records: Sequence[ImageRecord]) -> None:
        """Append ``records`` in the given order, then flush and fsync the file.

        A record holding a NaN or infinity is written as an error record (see ``json_format.finite_record``).
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
        records = [finite_record(r) for r in records]
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
        return f"<ResultWriter {self.format} {str(self.path)!r} {state}>"


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




def open_writer(path: Path, record_type: type[ImageRecord], run: dict[str, Any], *,
                overwrite: bool = False, resume: bool = False) -> ResultWriter:
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
            neither ``overwrite`` nor ``resume`` is given; a CSV to resume whose header does not
            match ``record_type``; the file or its folder cannot be created, or the existing
            file is corrupt (exit code 2).
    """
    path = Path(path)
    fmt = output_format(path)
    if overwrite and resume:
        raise UsageError("--overwrite and --resume cannot be used together")
    not_a_folder(path)
    existing = existing_files(path, fmt)
    if existing and not (overwrite or resume):
        raise exists_error(existing[0])
    make_parent(path)
    mode = "overwrite" if overwrite else "append" if resume else "new"
    return ResultWriter(path, record_type, run, mode=mode)
