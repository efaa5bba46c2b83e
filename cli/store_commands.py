"""``wwts store info | prune | clear``: what the embedding store holds, and tidying it.

The store itself is ``core.store``; this module only shows and asks. ``info`` lists each store file
(one per model key: model, dtype, photos, label prompts, size, oldest and newest embedding),
``prune`` forgets photos whose files are gone or changed, ``clear`` deletes the store files.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..core import dtype_name
from .console import DataConsole, styled
from .store_options import STORE_DIR_ONLY, STORE_HELP

store_app = typer.Typer(name="store", help=STORE_HELP, no_args_is_help=True, add_completion=False,
                        rich_markup_mode="rich", context_settings={"help_option_names": ["-h", "--help"]})

JsonInfoOpt = Annotated[bool, typer.Option("--json", help="Print the facts as one JSON object.")]


def _folder(store: Path | None) -> Path:
    from ..core.store import default_store_dir

    return Path(store) if store else default_store_dir()


def _size(n: int) -> str:
    """``1.2 MB`` (decimal units, as file managers show them)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _when(t: float | None) -> str | None:
    """Unix seconds → local ISO 8601 to the second (``None`` stays ``None``)."""
    return None if t is None else dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def _describe(entry: dict[str, Any]) -> dict[str, Any]:
    """One store file (``core.store.store_files``) as JSON-ready facts."""
    out: dict[str, Any] = {"file": str(entry["path"]), "bytes": entry["bytes"]}
    if entry["problem"]:
        out["problem"] = entry["problem"]
        return out
    key, stats = entry["key"] or {}, entry["stats"] or {}
    weights = key.get("weights") or {}
    out.update(model=stats.get("model"), revision=weights.get("revision") or weights.get("files", "")[:16] or None,
               dtype=dtype_name(key.get("dtype", "")), quantize=key.get("quantize"),
               input_size=key.get("input_size"), photos=stats.get("photos"), paths=stats.get("paths"),
               label_prompts=stats.get("texts"), dim=stats.get("dim"), oldest=_when(stats.get("oldest")),
               newest=_when(stats.get("newest")))
    return out


@store_app.command("info")
def info(store: STORE_DIR_ONLY = None, as_json: JsonInfoOpt = False) -> None:
    """Show the store folder: each model's file, its photos and label prompts, size, oldest and newest."""
    from ..core.store import store_files

    folder = _folder(store)
    entries = [_describe(e) for e in store_files(folder)]
    total = sum(e["bytes"] for e in entries)
    if as_json:
        typer.echo(json.dumps({"folder": str(folder), "bytes": total, "stores": entries}, ensure_ascii=False, indent=2))
        return
    console = DataConsole()
    console.print(f"embedding store: {folder} · {len(entries)} file{'s' if len(entries) != 1 else ''} · {_size(total)}",
                  soft_wrap=True)
    if not entries:
        console.print("empty: `wwts classify` fills it as it computes embeddings", soft_wrap=True)
        return
    table = Table(show_lines=False)
    for name, justify in (("model", "left"), ("dtype", "left"), ("photos", "right"), ("labels", "right"),
                          ("size", "right"), ("oldest", "left"), ("newest", "left")):
        table.add_column(name, justify=justify, overflow="fold", no_wrap=name != "model")
    for e in entries:
        if "problem" in e:
            table.add_row(Path(e["file"]).name, styled((e["problem"], "red")), "", "", _size(e["bytes"]), "", "")
            continue
        table.add_row(str(e["model"]), e["dtype"] + (f" + {e['quantize']}" if e["quantize"] else ""),
                      str(e["photos"]), str(e["label_prompts"]), _size(e["bytes"]),
                      (e["oldest"] or "")[:10], (e["newest"] or "")[:10])  # --json: to the second
    console.print(table)


@store_app.command("prune")
def prune(store: STORE_DIR_ONLY = None) -> None:
    """Forget the photos whose files are gone (or changed since their embedding was stored)."""
    from ..core.store import prune_stores

    folder = _folder(store)
    paths, photos = prune_stores(folder)
    DataConsole().print(f"pruned {folder}: {paths} paths and {photos} photo embeddings removed", soft_wrap=True)


@store_app.command("clear")
def clear(store: STORE_DIR_ONLY = None) -> None:
    """Delete every store file (all models); the next run starts an empty store."""
    from ..core.store import clear_stores

    folder = _folder(store)
    files, freed = clear_stores(folder)
    DataConsole().print(f"cleared {folder}: {files} files removed, {_size(freed)} freed", soft_wrap=True)
