"""Per-image result records: plain dataclasses, shared by the engine, the writers and the CLI.

Every record has ``path`` (as the user would type it), ``width`` / ``height`` (pixels of the image
after EXIF orientation, ``None`` when it could not be read) and ``error`` (``None`` on success, else
one line ``"category: message"``), ``frames`` (frame count of an animated or multi-image file,
``None`` for a single image: only the first frame is used) and ``note`` (a non-fatal remark such
as unreadable EXIF orientation). CSV keeps the columns of ``csv_fields``; JSON/JSONL carry every
field. Task records add their own fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


@dataclass
class LabelScore:
    """One label with its probability in [0, 1] (softmax over all labels of the run)."""

    label: str
    score: float


@dataclass
class ImageRecord:
    """Fields common to all tasks. ``csv_fields`` is the column order of the CSV writer."""

    path: str
    width: int | None = None
    height: int | None = None
    error: str | None = None
    frames: int | None = None
    note: str | None = None

    csv_fields: ClassVar[tuple[str, ...]] = ("path", "width", "height", "error")

    @property
    def ok(self) -> bool:
        """True when the image was processed without error."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the record (nested dataclasses become dicts)."""
        out: dict[str, Any] = {}
        for f in fields(self):  # dataclass fields only; ClassVars such as csv_fields are not
            name = f.name
            value = getattr(self, name)
            if isinstance(value, list):
                value = [v.__dict__.copy() if isinstance(v, LabelScore) else v for v in value]
            out[name] = value
        return out

    def csv_row(self) -> dict[str, str]:
        """One CSV row, keyed by ``csv_fields``; ``None`` becomes an empty cell."""
        d = self.to_dict()
        return {k: "" if d.get(k) is None else str(d[k]) for k in self.csv_fields}


@dataclass
class ClassifyResult(ImageRecord):
    """Zero-shot classification of one image.

    Attributes:
        label: best label (``None`` on error).
        score: its probability in [0, 1].
        top_k: the ``k`` best labels, best first.
        labels: ``--multi-label``: every label whose per-label score passed the threshold, best
            first (``[]`` when none did); ``None`` in single-label runs and on error.
        cached: ``True`` when the image's embedding was read from the embedding store (the file
            was not decoded), ``False`` when it was computed; ``None`` on error. JSON/JSONL only.
    """

    label: str | None = None
    score: float | None = None
    top_k: list[LabelScore] = field(default_factory=list)
    labels: list[LabelScore] | None = None
    cached: bool | None = None

    csv_fields: ClassVar[tuple[str, ...]] = ("path", "label", "score", "top_k", "labels", "width", "height", "error")

    def csv_row(self) -> dict[str, str]:
        """CSV row with ``score`` to 4 decimals, ``top_k`` and ``labels`` as ``人:0.9120;车:0.0510``."""
        row = super().csv_row()
        row["score"] = "" if self.score is None else f"{self.score:.4f}"
        row["top_k"] = ";".join(f"{ls.label}:{ls.score:.4f}" for ls in self.top_k)
        row["labels"] = ";".join(f"{ls.label}:{ls.score:.4f}" for ls in self.labels or [])
        return row


@dataclass
class CaptionResult(ImageRecord):
    """Caption of one image (``None`` on error); the prompt and special tokens are not included.

    Attributes:
        cached: ``True`` when the caption was read from the caption store (the file was not
            decoded), ``False`` when it was generated; ``None`` on error. JSON/JSONL only.
    """

    caption: str | None = None
    cached: bool | None = None

    csv_fields: ClassVar[tuple[str, ...]] = ("path", "caption", "width", "height", "error")


@dataclass
class SearchResult(ImageRecord):
    """One image ranked by ``wwts search``.

    Attributes:
        score: cosine similarity in [-1, 1] between the image's embedding and the query text's
            (both L2-normalised); ``None`` on error.
        cached: the embedding was read from the store (see ``ClassifyResult.cached``).
    """

    score: float | None = None
    cached: bool | None = None

    csv_fields: ClassVar[tuple[str, ...]] = ("path", "score", "width", "height", "error")

    def csv_row(self) -> dict[str, str]:
        """CSV row with ``score`` to 4 decimals."""
        row = super().csv_row()
        row["score"] = "" if self.score is None else f"{self.score:.4f}"
        return row


@dataclass
class EmbeddingRecord(ImageRecord):
    """One image's embedding (``wwts embed``).

    Attributes:
        content_hash: BLAKE3 of the file's bytes (hex), the store's key.
        embedding: ``D`` floats, L2-normalised; ``None`` on error.
        cached: the embedding was read from the store.
    """

    content_hash: str | None = None
    embedding: list[float] | None = None
    cached: bool | None = None

    csv_fields: ClassVar[tuple[str, ...]] = ("path", "content_hash", "width", "height", "error")
