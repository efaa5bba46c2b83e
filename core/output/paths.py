"""The files of one output ``OUT``: its format, the files kept next to it, and the checks made
before anything is written.

Files next to the output ``OUT`` (all in the same folder, so ``os.replace`` stays atomic):

``OUT.run.json``
    The run section (model, device, dtype, labels / prompt...), rewritten atomically at open and at
    close (merged with the final statistics). CSV and JSONL have no place for it inside, and
    ``--resume`` must know whether earlier records were made with the same settings, so for those
    formats it stays after the run. For ``.json`` it exists only while the run is unfinished (the
    published file carries the run section inside).
``OUT.partial.jsonl`` (``.json`` only)
    The records of an unfinished ``.json`` run, one JSON object per line, appended per batch
    exactly like a ``.jsonl`` output (see ``writers``).
``OUT.lock`` and ``OUT.lock.info``
    The exclusive lock of the run writing ``OUT`` and its holder's details (see ``lock``).

Errors: an output that cannot be used before the run starts (folder not writable, locked by
another run, corrupt on ``--resume``) raises ``UsageError`` (exit code 2, like any other
``--out`` that cannot be right); a write failing mid-run raises ``WwtsError`` (exit code 1): the
records written so far are kept.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError, describe


#: Output formats by file extension (lower case, with the dot).
FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl"}


def output_format(path: Path) -> str:
    """The format of an output file, from its extension (case-insensitive).

    Returns:
        ``"csv"``, ``"json"`` or ``"jsonl"``.

    Raises:
        UsageError: any other extension; the message names the valid ones.
    """
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(
            f"cannot tell the output format of {path}: use a file name ending in "
            + ", ".join(FORMATS)
        )
    return fmt


def run_sidecar_path(path: Path) -> Path:
    """``OUT.run.json``: where the run section of output ``path`` is kept (see the module doc)."""
    path = Path(path)
    return path.with_name(path.name + ".run.json")


def partial_path(path: Path) -> Path:
    """``OUT.partial.jsonl``: the records of an unfinished ``.json`` output ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".partial.jsonl")


def read_bytes(path: Path) -> bytes:
    """The whole content of ``path``.

    Raises:
        UsageError: it cannot be read.
    """
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None


def exists_error(path: Path) -> UsageError:
    """The error for an output ``path`` that exists while neither ``--overwrite`` nor ``--resume``
    was given."""
    return UsageError(
        f"output {path} already exists; pass --overwrite to replace it or --resume to continue it"
    )


def not_a_folder(path: Path) -> None:
    """Refuse an output ``path`` that is a folder.

    Raises:
        UsageError: ``path`` is a folder.
    """
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; give a file name ending in " + ", ".join(FORMATS))


def existing_files(path: Path, fmt: str) -> list[Path]:
    """The files of output ``path`` (format ``fmt``) that exist: ``path`` and, for ``.json``, an
    unfinished ``OUT.partial.jsonl``."""
    candidates = [path, partial_path(path)] if fmt == "json" else [path]
    return [p for p in candidates if p.exists()]


def make_parent(path: Path) -> None:
    """Create the output's folder (and its parents) when missing.

    Raises:
        UsageError: it cannot be created (a parent is a file, read-only file system...).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the folder of --out {path}: {describe(exc)}") from None
