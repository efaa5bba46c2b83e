"""Embeddings to a Parquet file for other tools (``wwts embed``), through pyarrow.

One row per image: ``path`` (as the user typed it), ``content_hash`` (BLAKE3 of the file's bytes),
``model_key`` (the canonical JSON of ``keys.ModelKey``), ``embedding`` (``fixed_size_list<float>[D]``,
L2-normalised, or null for an image that failed), ``width``, ``height``, ``cached`` and ``error``.
Rows are written as each batch comes (``pyarrow.parquet.ParquetWriter``, one row group per
``write``) into ``core.atomic.atomic_file``'s temporary file, published (fsync + ``os.replace``) at
``close``, so ``OUT`` is either complete or absent. The helper is held open across the batches in a
``contextlib.ExitStack``: the rows arrive over many calls, so ``atomic_write``'s iterable of chunks
does not fit. pyarrow is the ``store`` extra (``pip install "wwts[store]"``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

from ..atomic import atomic_file
from ..errors import UsageError

#: What to install when pyarrow is missing.
PYARROW_HINT = 'pip install "wwts[store]"'


def require_pyarrow() -> Any:
    """``pyarrow.parquet`` (importing pyarrow).

    Raises:
        UsageError: pyarrow is not installed (the message says what to install).
    """
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"writing Parquet needs pyarrow: {PYARROW_HINT}") from None
    return pq


class ParquetExport:
    """Streams embedding rows into a Parquet file, published whole at ``close``.

    Args:
        path: the ``.parquet`` file (replaced at ``close`` if it exists).
        model_key: the model key text written in every row and in the file's metadata.

    Raises:
        UsageError: pyarrow is missing.
    """

    def __init__(self, path: Path, model_key: str) -> None:
        self._pq = require_pyarrow()
        self.path = Path(path)
        self.model_key = model_key
        self.rows = 0
        self._writer = None
        self._file = contextlib.ExitStack()  # holds atomic_file(path) from the first rows to close
        self._dim: int | None = None
        self._held: list[dict[str, Any]] = []  # rows that came before the first embedding

    def _schema(self, dim: int) -> Any:
        import pyarrow as pa

        fields = [pa.field("path", pa.string()), pa.field("content_hash", pa.string()),
                  pa.field("model_key", pa.string()), pa.field("embedding", pa.list_(pa.float32(), dim)),
                  pa.field("width", pa.int32()), pa.field("height", pa.int32()), pa.field("cached", pa.bool_()),
                  pa.field("error", pa.string())]
        return pa.schema(fields, metadata={"wwts.model_key": self.model_key})

    def _open(self) -> None:
        """Start the temporary file and the Parquet writer for dimension ``_dim``."""
        sink = self._file.enter_context(atomic_file(self.path))
        self._writer = self._pq.ParquetWriter(sink, self._schema(self._dim))

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append rows (dicts with the columns above; ``embedding`` a list of D floats or ``None``).
        The first row that has an embedding fixes D; rows before it wait in memory."""
        import pyarrow as pa

        if self._dim is None:
            dims = [len(r["embedding"]) for r in rows if r.get("embedding") is not None]
            if not dims:
                self._held.extend(rows)
                return
            self._dim = dims[0]
            self._open()
            rows, self._held = self._held + list(rows), []
        schema = self._schema(self._dim)
        table = pa.Table.from_pylist([{**r, "model_key": self.model_key} for r in rows], schema=schema)
        self._writer.write_table(table)
        self.rows += len(rows)

    def close(self) -> None:
        """Finish the file and publish it as ``path`` (a file with no embedding at all gets D = 0)."""
        if self._writer is None:
            self._dim = 0
            self._open()
            held, self._held = self._held, []
            if held:
                import pyarrow as pa

                self._writer.write_table(pa.Table.from_pylist(
                    [{**r, "model_key": self.model_key, "embedding": None} for r in held], schema=self._schema(0)))
                self.rows += len(held)
        try:
            self._writer.close()
        except BaseException as exc:
            self._file.__exit__(type(exc), exc, exc.__traceback__)  # drops the temporary file
            raise
        self._file.close()  # publishes ``path``

    def abort(self) -> None:
        """Drop the temporary file (an interrupted export publishes nothing)."""
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            error = RuntimeError("export aborted")
            self._file.__exit__(RuntimeError, error, None)
