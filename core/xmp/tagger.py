"""Sidecars for a stream of records: ``SidecarTagger.write(records)`` after each batch of a run.

One sidecar per successful record (labels from ``core.output.record_labels``, the caption of a
caption record); error records get none. A failure costs that photo's sidecar only and becomes a
message; the run goes on. With ``replace`` naming, two photos of one stem (``IMG_1.jpg`` and
``IMG_1.png``) would share ``IMG_1.xmp``: the second is skipped with a message instead of mixing
their tags.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..output import record_labels
from ..errors import WwtsError
from .sidecar import sidecar_path, write_sidecar


@dataclass
class SidecarTagger:
    """Writes the XMP sidecars of records, batch by batch.

    Attributes:
        naming: ``append`` (``IMG_0001.jpg.xmp``) or ``replace`` (``IMG_0001.xmp``).
        written / created / failed / kept_descriptions: counts so far.
        messages: one line per photo whose sidecar was not written, or kept its description.
    """

    naming: str = "append"
    written: int = 0
    created: int = 0
    failed: int = 0
    kept_descriptions: int = 0
    messages: list[str] = field(default_factory=list)
    _owners: dict[str, str] = field(default_factory=dict)

    def write(self, records: Iterable[Any]) -> list[str]:
        """Write the sidecars of ``records`` (``ImageRecord`` objects or their dicts).

        Returns:
            The messages of this batch (also appended to ``messages``).
        """
        new: list[str] = []
        for record in records:
            rec = record if isinstance(record, dict) else record.to_dict()
            line = self._one(rec)
            if line:
                new.append(line)
        self.messages.extend(new)
        return new

    def _one(self, rec: dict[str, Any]) -> str | None:
        """Write one record's sidecar; the message for the user, or ``None``."""
        if rec.get("error"):
            return None
        labels = [label for label, _ in record_labels(rec)]
        caption = rec.get("caption") or None
        if not labels and not caption:
            return None
        photo = Path(rec["path"])
        key = os.path.normcase(os.path.abspath(sidecar_path(photo, self.naming)))
        owner = self._owners.setdefault(key, str(photo))
        if owner != str(photo):
            self.failed += 1
            return (f"xmp: {photo}: skipped, its sidecar {sidecar_path(photo, self.naming)} already holds the "
                    f"tags of {owner} (use --xmp-name append for one sidecar per file)")
        try:
            path, created, kept_description = write_sidecar(photo, labels, caption, naming=self.naming)
        except WwtsError as exc:
            self.failed += 1
            return f"xmp: {photo}: {exc}"
        self.written += 1
        self.created += created
        if kept_description:
            self.kept_descriptions += 1
            return f"xmp: {path}: kept its own description (dc:description); keywords added"
        return None

    def summary(self) -> str:
        """``xmp: N sidecars written (M new), F failed``."""
        text = f"xmp: {self.written} sidecars written ({self.created} new)"
        if self.kept_descriptions:
            text += f", {self.kept_descriptions} kept their own description"
        return text + (f", {self.failed} not written" if self.failed else "")
