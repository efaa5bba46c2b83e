"""``OUT.run.json``: the run section kept next to an output (see ``paths``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..errors import UsageError, WwtsError
from .json_format import finite_json, json_bytes, read_json_file
from .paths import run_sidecar_path


def read_run_sidecar(path: Path) -> dict[str, Any] | None:
    """The run section stored next to output ``path``; ``None`` when there is no sidecar.

    Raises:
        UsageError: the sidecar is unreadable, not JSON, or not a JSON object.
    """
    sidecar = run_sidecar_path(path)
    if not sidecar.exists():
        return None
    run = read_json_file(sidecar)
    if not isinstance(run, dict):
        raise UsageError(f"{sidecar} does not hold a run section (a JSON object)")
    return run


def write_run_sidecar(path: Path, run: dict[str, Any]) -> None:
    """Store ``run`` atomically as ``OUT.run.json`` next to output ``path`` (non-finite numbers
    become ``null``).

    Raises:
        WwtsError: it could not be written.
    """
    sidecar = run_sidecar_path(path)
    try:
        atomic_write(sidecar, [json_bytes(finite_json(run), indent=2), b"\n"])
    except OSError as exc:
        raise WwtsError(f"cannot write run settings to {sidecar}: {exc}") from exc
