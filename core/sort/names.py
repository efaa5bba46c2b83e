"""File-system-safe folder names for labels, and free file names in a folder.

A label is user text: ``猫/狗``, ``..``, ``CON``, ``a:b`` or a name with a NUL must still become
one folder directly under ``--into`` that every common file system accepts. The rules are those
of Windows' naming conventions (Microsoft, "Naming Files, Paths, and Namespaces": reserved
characters ``<>:"/\\|?*``, control characters, the reserved device names ``CON``, ``PRN``,
``AUX``, ``NUL``, ``COM0-9``, ``LPT0-9`` with or without an extension, no trailing dot or space),
which also cover POSIX (``/`` and NUL), plus the 255-byte name limit of ext4, APFS and NTFS.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

_BAD_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')
_RESERVED = re.compile(r"(CON|PRN|AUX|NUL|COM[0-9¹²³]|LPT[0-9¹²³])(\..*)?", re.IGNORECASE)
#: Longest folder name, in UTF-8 bytes (ext4/APFS/NTFS allow 255; room is left for " (99)").
MAX_NAME_BYTES = 240


def safe_name(label: str) -> str:
    """A folder name for ``label``: reserved characters become ``_``, no leading/trailing dots or
    spaces, reserved device names get a leading ``_``, at most ``MAX_NAME_BYTES`` bytes of UTF-8
    (cut at a character boundary), NFC-normalised (macOS would store the decomposed form).
    ``""``, ``.`` and ``..`` become ``_``."""
    name = unicodedata.normalize("NFC", label)
    name = _BAD_CHARS.sub("_", name).strip(" .")
    if _RESERVED.fullmatch(name):
        name = "_" + name
    encoded = name.encode("utf-8")[:MAX_NAME_BYTES]
    name = encoded.decode("utf-8", errors="ignore").rstrip(" .")
    return name or "_"


def label_folders(labels) -> dict[str, str]:
    """Label → folder name for every label, in first-seen order; two labels whose names would be
    the same (``a/b`` and ``a_b``, or ``Cat`` and ``cat`` on a case-insensitive disk) get
    ``name (2)``, ``name (3)``..."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for label in labels:
        if label in out:
            continue
        base = safe_name(label)
        name, n = base, 1
        while name.casefold() in taken:
            n += 1
            name = f"{base} ({n})"
        taken.add(name.casefold())
        out[label] = name
    return out


def free_name(folder: Path, name: str, taken: set[str]) -> str:
    """``name`` if neither ``folder/name`` exists nor ``taken`` has it, else ``stem (2).ext``,
    ``stem (3).ext``... (the free name is added to ``taken``, compared case-insensitively)."""
    stem, suffix = Path(name).stem, Path(name).suffix
    candidate, n = name, 1
    while candidate.casefold() in taken or (folder / candidate).exists() or (folder / candidate).is_symlink():
        n += 1
        candidate = f"{stem} ({n}){suffix}"
    taken.add(candidate.casefold())
    return candidate
