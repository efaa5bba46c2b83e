"""Doing a ``SortPlan``, with an undo log; and undoing it.

The log (JSON Lines, ``INTO/.wwts-sort-YYYYmmdd-HHMMSS.jsonl``) gets each change *before* it is
made, flushed and fsynced, so whatever stops the process (Ctrl-C, a crash, a power cut) the log
names every change that may have happened, and ``undo`` looks at the disk to see which did:

- ``mkdir``: the folder is removed if it is empty;
- ``link``: the link is removed if it is still a link;
- ``copy``: the copy is removed (and a half-written ``.NAME.wwts-tmp`` beside it);
- ``move``: the photo is moved back if it is at the target and not at the source; when it is at
  both (stopped between linking and unlinking, or a cross-device copy), the target copy is dropped.

Nothing is ever overwritten: a move is a hard link plus unlink (the link fails if the name is
taken), or a checked rename / copy where hard links are not possible.
"""

from __future__ import annotations

import errno
import filecmp
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..errors import UsageError, WwtsError, describe
from .dry_run import Action, SortPlan


@dataclass
class SortReport:
    """What ``apply_plan`` / ``undo`` did: ``done`` changes, ``failed`` ``(what, why)``, the ``log``."""

    log: Path | None = None
    done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def _log(fh: TextIO, entry: dict) -> None:
    """Append one entry to the undo log ``fh`` (one JSON object per line), flushed and fsynced
    before the change it names is made."""
    fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def _tmp_of(target: Path) -> Path:
    return target.with_name(f".{target.name}.wwts-tmp")


def _no_clobber(target: Path) -> None:
    if target.exists() or target.is_symlink():
        raise FileExistsError(errno.EEXIST, "exists, not overwritten", str(target))


def _copy(source: Path, target: Path) -> None:
    """Copy (data and times) through a temporary name, so ``target`` is whole or absent."""
    _no_clobber(target)
    tmp = _tmp_of(target)
    shutil.copy2(source, tmp)
    try:
        _no_clobber(target)
        os.rename(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _move(source: Path, target: Path) -> None:
    """Move without overwriting: hard link then unlink; a copy then unlink across devices."""
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:  # another device, or a file system without hard links
        _copy(source, target)
    os.unlink(source)


def _link(action: Action) -> None:
    _no_clobber(action.target)
    to = os.path.relpath(action.source, action.target.parent) if action.relative else str(action.source)
    os.symlink(to, action.target)


_DO: dict[str, Callable] = {"copy": lambda a: _copy(a.source, a.target), "move": lambda a: _move(a.source, a.target),
                            "link": _link}


def _new_log(plan: SortPlan) -> tuple[Path, TextIO]:
    """The undo log ``INTO/.wwts-sort-YYYYmmdd-HHMMSS.jsonl`` (``-2``, ``-3``... when that name is
    taken), created with its header line: ``(path, open text file)``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    header = {"wwts_sort": 1, "mode": plan.mode, "into": str(plan.into.absolute()),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for n in range(1, 1000):
        path = plan.into / f".wwts-sort-{stamp}{'' if n == 1 else f'-{n}'}.jsonl"
        try:
            fh = open(path, "x", encoding="utf-8")
        except FileExistsError:
            continue
        try:
            _log(fh, header)
        except BaseException:
            fh.close()
            raise
        return path, fh
    raise FileExistsError(errno.EEXIST, "no free undo log name", str(plan.into))


def apply_plan(plan: SortPlan, *, on_action: Callable[[Action], None] | None = None) -> SortReport:
    """Make the changes of ``plan``, logging each first; a failure costs that change only.

    Args:
        plan: from ``plan_sort``.
        on_action: called after each change that was made (progress).

    Returns:
        ``SortReport`` with the log's path (``wwts sort --undo LOG`` reverts everything).

    Raises:
        WwtsError: the ``--into`` folder or its log cannot be created (before any change).
        KeyboardInterrupt: passed on after the log is closed; the log covers what was done.
    """
    try:
        plan.into.mkdir(parents=True, exist_ok=True)
        log_path, log = _new_log(plan)
    except OSError as exc:
        raise WwtsError(f"cannot create {plan.into} or its undo log: {describe(exc)}") from None
    report = SortReport(log=log_path)
    made: set[Path] = set()
    try:
        for action in plan.actions:
            folder = action.target.parent
            try:
                if folder not in made and not folder.is_dir():
                    _log(log, {"op": "mkdir", "path": str(folder.absolute())})
                    folder.mkdir(parents=True)
                made.add(folder)
                _log(log, {"op": action.op, "source": str(action.source), "target": str(action.target.absolute()),
                           "relative": action.relative})
                _DO[action.op](action)
            except OSError as exc:
                report.failed.append((f"{action.op} {action.source} → {action.target}", describe(exc)))
                continue
            report.done += 1
            if on_action:
                on_action(action)
    finally:
        log.close()
    return report


def read_log(path: Path) -> tuple[dict, list[dict]]:
    """The header and the entries of an undo log; a torn last line (the process died while
    writing it) is ignored: its change was not started.

    Raises:
        UsageError: not a wwts sort log, or already undone.
    """
    path = Path(path)
    if not path.is_file():
        hint = " (it was undone already)" if Path(f"{path}.undone").exists() else ""
        raise UsageError(f"undo log {path} does not exist{hint}")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    entries = []
    for n, line in enumerate(lines):
        try:
            entries.append(json.loads(line))
        except ValueError:
            if n == len(lines) - 1:
                break
            raise UsageError(f"undo log {path}: line {n + 1} is not JSON") from None
    if not entries or not isinstance(entries[0], dict) or entries[0].get("wwts_sort") != 1:
        raise UsageError(f"{path} is not a wwts sort undo log")
    return entries[0], entries[1:]


def _undo_move(source: Path, target: Path) -> str:
    """Put a moved photo back; the word for what happened."""
    at_target, at_source = target.exists() and not target.is_symlink(), source.exists()
    if at_target and at_source:
        if os.path.samefile(source, target) or filecmp.cmp(source, target, shallow=False):
            target.unlink()
            return "dropped"
        raise FileExistsError(errno.EEXIST, "both the original and the sorted file exist and differ", str(source))
    if at_target:
        source.parent.mkdir(parents=True, exist_ok=True)
        _move(target, source)
        return "moved back"
    _tmp_of(target).unlink(missing_ok=True)
    return "not moved"


def _undo_one(entry: dict) -> bool:
    """Revert one log entry; True when something changed."""
    op = entry.get("op")
    if op == "mkdir":
        try:
            Path(entry["path"]).rmdir()
            return True
        except OSError:  # not empty (someone else's files) or gone
            return False
    source, target = Path(entry["source"]), Path(entry["target"])
    if op == "link":
        if target.is_symlink():
            target.unlink()
            return True
        return False
    if op == "copy":
        _tmp_of(target).unlink(missing_ok=True)
        if target.is_file() and not target.is_symlink():
            target.unlink()
            return True
        return False
    if op == "move":
        return _undo_move(source, target) != "not moved"
    raise UsageError(f"unknown entry in the undo log: {entry!r}")


def undo(path: Path) -> SortReport:
    """Revert the changes an undo log names, newest first; renames the log ``LOG.undone``.

    Raises:
        UsageError: see ``read_log``.
    """
    _, entries = read_log(path)
    report = SortReport(log=Path(path))
    for entry in reversed(entries):
        try:
            report.done += _undo_one(entry)
        except (OSError, KeyError) as exc:
            report.failed.append((f"{entry.get('op')} {entry.get('target', entry.get('path'))}", describe(exc)))
    if not report.failed:
        os.replace(path, f"{path}.undone")
    return report
