"""``--label-map FILE.json``: show a model's labels under other names (e.g. in Chinese).

The file is one JSON object whose keys are labels as the model names them (a closed-set
classifier's ``id2label`` values, or zero-shot labels) or class ids written as strings
(``"281"``), and whose values are the names to show: ``{"tabby, tabby cat": "虎斑猫", "282": "老虎"}``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import UsageError

log = logging.getLogger(__name__)


def read_label_map(path: Path) -> dict[str, str]:
    """The mapping in ``path``.

    Raises:
        UsageError: unreadable file, invalid JSON, not an object of strings, or an empty name.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"cannot read --label-map {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise UsageError(f"--label-map {path} must be one JSON object of strings, e.g. "
                         '{"tabby, tabby cat": "虎斑猫", "282": "老虎"}')
    empty = [k for k, v in data.items() if not v.strip()]
    if empty:
        raise UsageError(f"--label-map {path}: empty name for {empty[0]!r}")
    return {k: v.strip() for k, v in data.items()}


def apply_label_map(names: Sequence[str], mapping: Mapping[str, str] | None, *,
                    source: str = "--label-map") -> list[str]:
    """``names`` (label ``i`` at index ``i``) translated by ``mapping`` (by name, else by the id
    ``str(i)``); names without an entry stay as they are.

    Logs one warning when some names have no entry and one when keys of ``mapping`` match no
    label (a typo, or a map written for another model).
    """
    if not mapping:
        return list(names)
    out = [mapping.get(name, mapping.get(str(i), name)) for i, name in enumerate(names)]
    missing = [name for i, name in enumerate(names) if name not in mapping and str(i) not in mapping]
    if missing:
        log.warning("%s has no entry for %d of the %d labels (kept as the model names them, e.g. %r)",
                    source, len(missing), len(names), missing[0])
    known = set(names) | {str(i) for i in range(len(names))}
    unused = [key for key in mapping if key not in known]
    if unused:
        log.warning("%s: %d entries match no label of the model (e.g. %r)", source, len(unused), unused[0])
    return out
