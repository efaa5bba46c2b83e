"""What ``wwts sort`` would do: one action per (photo, label), computed without touching anything.

Each successful record goes under the folder of every label it has (``core.output.record_labels``:
the best label, or every label of a multi-label record). ``link`` makes symbolic links to the
photos (absolute targets), ``copy`` copies them, ``move`` moves each photo under its best label and
links it (relative links) from its other labels' folders, so there is one file and no copies.
File names are kept; a name already used in a folder becomes ``name (2).jpg``. A target that is
already the photo (a link to it, an identical copy) is left alone, so sorting twice adds nothing.
"""

from __future__ import annotations

import filecmp
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..output import Results, record_labels
from .names import label_folders

#: ``wwts sort`` modes.
MODES = ("link", "copy", "move")


@dataclass(frozen=True)
class Action:
    """One file-system change: ``op`` (``link``, ``copy``, ``move``) from ``source`` to ``target``.

    A ``link`` whose ``relative`` is True points to ``source`` by a path relative to the link's
    folder (the other labels of a moved photo); otherwise to the absolute ``source``.
    """

    op: str
    source: Path
    target: Path
    label: str
    relative: bool = False


@dataclass
class SortPlan:
    """``actions`` in order; ``skipped``: ``(path, why)`` for records that get no action;
    ``present``: ``(path, target)`` already sorted; ``folders``: label → folder."""

    into: Path
    mode: str
    actions: list[Action] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    present: list[tuple[str, Path]] = field(default_factory=list)
    folders: dict[str, Path] = field(default_factory=dict)


def _already_there(target: Path, source: Path, mode: str) -> bool:
    """True when ``target`` already is ``source``: a link to it, the same file, or an identical copy."""
    try:
        if target.is_symlink():
            return Path(os.path.realpath(target)) == Path(os.path.realpath(source))
        if not target.exists():
            return False
        return os.path.samefile(target, source) or (mode == "copy" and filecmp.cmp(target, source, shallow=False))
    except OSError:
        return False


def _place(plan: SortPlan, taken: dict[Path, set[str]], op: str, source: Path, label: str,
           check: Path, relative: bool = False) -> Action | None:
    """Add the action that puts ``source`` (checked as ``check``) into ``label``'s folder."""
    folder = plan.folders[label]
    names = taken.setdefault(folder, set())
    stem, suffix, n, candidate = check.stem, check.suffix, 1, check.name
    while True:  # the name itself, then "stem (2).ext"...: the first free one, or where it already is
        target = folder / candidate
        if candidate.casefold() not in names:
            if not (target.exists() or target.is_symlink()):
                break
            if _already_there(target, check, plan.mode):
                plan.present.append((str(check), target))
                names.add(candidate.casefold())
                return None
        n += 1
        candidate = f"{stem} ({n}){suffix}"
    names.add(candidate.casefold())
    action = Action(op, source, target, label, relative)
    plan.actions.append(action)
    return action


def plan_sort(results: Results, into: Path, mode: str = "link") -> SortPlan:
    """The actions that sort the photos of ``results`` into label folders under ``into``.

    Args:
        results: ``core.output.read_results`` of a classify output.
        into: the folder that gets one subfolder per label (``core.sort.names.safe_name``).
        mode: ``link``, ``copy`` or ``move``.

    Returns:
        A ``SortPlan``; nothing on disk is changed. Records with an error, no label or a photo
        that no longer exists are listed in ``skipped`` with the reason.

    Raises:
        ValueError: an unknown ``mode``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown sort mode {mode!r}; valid: {', '.join(MODES)}")
    into = Path(into)
    plan = SortPlan(into=into, mode=mode)
    labelled = []
    for rec in results.records:
        labels = [label for label, _ in record_labels(rec)]
        path = str(rec.get("path"))
        if rec.get("error"):
            plan.skipped.append((path, f"error record ({rec['error']})"))
        elif not labels:
            plan.skipped.append((path, "no label"))
        elif not Path(path).is_file():
            plan.skipped.append((path, "the photo is not there any more"))
        else:
            labelled.append((Path(path), labels))
    folders = label_folders(label for _, labels in labelled for label in labels)
    plan.folders = {label: into / name for label, name in folders.items()}
    taken: dict[Path, set[str]] = {}
    for photo, labels in labelled:
        source = photo.absolute()
        if mode != "move":
            for label in labels:
                _place(plan, taken, mode, source, label, source)
            continue
        moved = _place(plan, taken, "move", source, labels[0], source)
        where = moved.target if moved else plan.folders[labels[0]] / photo.name
        for label in labels[1:]:
            _place(plan, taken, "link", where, label, where, relative=True)
    return plan
