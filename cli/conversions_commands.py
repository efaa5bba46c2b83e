"""``wwts conversions list`` / ``wwts conversions clear``: the models converted for OpenVINO and
ONNX Runtime, saved in the user cache (``core.backends``' exports).

``list`` shows one row per converted tower (backend, model, tower, precision, size, how long
it took, when); ``clear`` deletes them (``--backend`` for one backend only) with OpenVINO's
compiled-blob cache, and says how much it freed. The next run converts again.
"""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from .console import DataConsole

conversions_app = typer.Typer(help="List or clear the models converted for OpenVINO and ONNX Runtime.",
                              no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})

ConvBackendOpt = Annotated[Optional[str], typer.Option("--backend", help="openvino or onnxruntime (default: both).")]


def _mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB"


@conversions_app.command("list")
def list_command() -> None:
    """Show the saved conversions and where they are."""
    from ..core import backends

    console = DataConsole()
    rows = backends.list_conversions()
    if not rows:
        console.print(f"no saved conversions in {backends.cache_root()}")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("backend", "model", "tower", "precision", "size", "took", "made"):
        table.add_column(name, overflow="fold")
    for c in rows:
        made = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.created)) if c.created else "?"
        table.add_row(c.backend, c.model, c.tower, c.precision, _mib(c.size_bytes), f"{c.seconds:.1f} s", made)
    console.print(table)
    console.print(f"{len(rows)} conversions, {_mib(sum(c.size_bytes for c in rows))} in {backends.cache_root()}")


@conversions_app.command("clear")
def clear_command(backend: ConvBackendOpt = None) -> None:
    """Delete the saved conversions (the next run converts again)."""
    from ..core import UsageError, backends
    from .run_loop import exit_on_error

    with exit_on_error():
        if backend not in (None, "openvino", "onnxruntime"):
            raise UsageError(f"--backend {backend}: valid: openvino, onnxruntime")
        count, freed = backends.clear_conversions(backend)
    DataConsole().print(f"removed {count} conversions ({_mib(freed)}) from {backends.cache_root()}")
