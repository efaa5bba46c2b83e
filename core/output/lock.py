"""``OUT.lock`` and ``OUT.lock.info``: the exclusive lock of the run writing ``OUT``.

The lock is taken before the model loads and held to the end; ``OUT.lock.info`` holds the
holder's pid, host, start time and command line, which a second run reads back to say who holds
the lock. Both are removed at the end.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import UsageError, describe
from ..atomic import atomic_write
from .json_format import json_bytes
from .paths import exists_error, existing_files, make_parent, not_a_folder, output_format


def _command_line() -> str:
    return " ".join([Path(sys.argv[0]).name if sys.argv else "wwts", *sys.argv[1:]])


class OutputLock:
    """An exclusive, non-blocking lock on one output file, held for a whole run.

    ``OUT.lock`` is locked with ``filelock.FileLock`` (``flock`` on POSIX, ``msvcrt`` on
    Windows; the operating system drops the lock when the process dies, so a crash never leaves a
    stale lock). Right after taking it the holder writes ``OUT.lock.info`` (JSON: ``pid``,
    ``host``, ``started``, ``command``), which a second run reads back to say who holds the lock.
    ``release`` removes both files while still holding the lock: a run that opened the old
    ``OUT.lock`` just before gets a deleted file, which filelock (>= 3.20.4) refuses
    (``st_nlink == 0``), and it tries again on the new one.

    Use ``lock_output``; an ``OutputLock`` is a context manager that releases on exit.
    """

    def __init__(self, path: Path, command: str | None = None) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.info_path = self.path.with_name(self.path.name + ".lock.info")
        self.command = command or _command_line()
        self._lock: Any = None

    @property
    def held(self) -> bool:
        """True between ``acquire`` and ``release``."""
        return self._lock is not None

    def acquire(self) -> None:
        """Take the lock at once (timeout 0) and write the holder's details.

        Raises:
            UsageError: another run holds it (the message names its pid, host, start time and
                command), or the lock file cannot be created next to the output (read-only file
                system, no permission...).
        """
        from filelock import FileLock, Timeout

        for attempt in range(3):
            lock = FileLock(str(self.lock_path), timeout=0)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                if self.lock_path.exists():
                    raise UsageError(self._held_message()) from None
                if attempt < 2:
                    continue  # its holder was just removing it: try again on a new file
                self._raise_cannot_create(None)
            except OSError as exc:
                self._raise_cannot_create(exc)
            break
        self._lock = lock
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": self.command}
        try:
            atomic_write(self.info_path, [json_bytes(info, indent=2), b"\n"])
        except OSError as exc:
            self.release()
            self._raise_cannot_create(exc)

    def _raise_cannot_create(self, exc: OSError | None) -> typing.NoReturn:
        if exc is None:  # filelock gave up without saying why: ask the file system
            try:
                os.close(os.open(self.lock_path, os.O_WRONLY | os.O_CREAT, 0o666))
                os.unlink(self.lock_path)
                exc = OSError(errno.EAGAIN, "the lock file keeps disappearing")
            except OSError as probe:
                exc = probe
        raise UsageError(
            f"cannot write next to --out {self.path} (the lock file {self.lock_path.name} cannot "
            f"be created): {describe(exc)}"
        ) from None

    def _held_message(self) -> str:
        for _ in range(20):  # the holder writes its details just after taking the lock
            if self.info_path.exists() or not self.lock_path.exists():
                break
            time.sleep(0.05)
        try:
            info = json.loads(self.info_path.read_bytes().decode("utf-8"))
            who = (f"pid {info['pid']} on {info['host']}, started {info['started']}: "
                   f"{info['command']}")
        except (OSError, ValueError, KeyError, TypeError):
            who = f"no details: {self.info_path.name} is missing or unreadable"
        return (f"--out {self.path} is being written by another wwts run ({who}); wait for it to "
                "finish, or choose another --out")

    def release(self) -> None:
        """Remove ``OUT.lock.info`` and ``OUT.lock``, then release. Idempotent; never raises."""
        lock, self._lock = self._lock, None
        if lock is None:
            return
        for leftover in (self.info_path, self.lock_path):
            with contextlib.suppress(OSError):  # Windows: the open lock file cannot be removed
                leftover.unlink()
        with contextlib.suppress(Exception):
            lock.release()

    def __enter__(self) -> OutputLock:
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_output(
    path: Path | None,
    *,
    inputs: Iterable[Path] = (),
    overwrite: bool = False,
    resume: bool = False,
    command: str | None = None,
) -> contextlib.AbstractContextManager[Any]:
    """Check that ``path`` can be written and lock it, before the model is loaded.

    In order: the extension (``output_format``), that it is not one of the ``inputs`` image
    files, not a folder; its folder is created when missing; ``OUT.lock`` is taken (see
    ``OutputLock``); then, under the lock, an existing output without ``overwrite`` / ``resume``
    is refused. Use the result as ``with lock_output(...):`` around the whole run.

    Args:
        path: the ``--out`` file, or ``None`` (no output: a context that does nothing).
        inputs: the paths given on the command line.
        overwrite, resume: as given (``--retry-failed`` counts as ``resume``).
        command: the command line written for other runs to read (default: ``sys.argv``).

    Returns:
        The held ``OutputLock`` (released by ``with``), or ``contextlib.nullcontext()``.

    Raises:
        UsageError: bad extension, ``path`` is an input image or a folder, it exists and
            neither ``overwrite`` nor ``resume`` is given, its folder cannot be created or
            written, or another run holds the lock (exit code 2).
    """
    if path is None:
        return contextlib.nullcontext()
    path = Path(path)
    fmt = output_format(path)
    resolved = path.resolve()
    if any(Path(p).is_file() and Path(p).resolve() == resolved for p in inputs):
        raise UsageError(f"--out {path} is one of the input images")
    not_a_folder(path)
    make_parent(path)
    lock = OutputLock(path, command)
    lock.acquire()
    existing = existing_files(path, fmt)
    if existing and not (overwrite or resume):
        lock.release()
        raise exists_error(existing[0])
    return lock
