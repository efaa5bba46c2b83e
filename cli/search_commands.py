"""``wwts search TEXT PATH...`` and ``wwts embed PATH... --out FILE.parquet``.

Both run the classify model through the same engine as ``wwts classify`` (decode pool, device,
dtype, batch size, the embedding store: only images the store lacks are decoded and encoded),
with ``core.tasks.SearchTask`` / ``EmbedTask`` as the head. ``search`` ranks the images by cosine
similarity to the text and prints or writes the best ``--top`` (table, CSV, JSON, JSONL: ``path``,
``score``, ``width``, ``height``); ``embed`` streams one Parquet row per image.

Exit codes as for classify: 0, 2 (usage, model, device, output; pyarrow missing for ``embed``),
3 (some images failed: ``search`` names them on stderr, ``embed`` writes them as rows with an
``error``), 4 (device fault), 130 / 143 (interrupted: nothing is published).
"""

from __future__ import annotations

import signal
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..core import RunConfig, UsageError, WwtsError, configure_libraries
from .console import DataConsole, shown, styled
from .options import (Backend, BackendOpt, BatchOpt, ClassifyDeviceOpt, ClassifyModelOpt, DType, DTypeOpt, HiddenOpt, InputsArg, MaxPixelsOpt,
                      OutOpt, OverwriteOpt, QuietOpt, RecursiveOpt, SymlinksOpt, ThreadsOpt, TruncOpt, TrustOpt,
                      WorkersOpt)
from .progress import RunProgress, loading
from .run import EXIT_IMAGES_FAILED, EXIT_SIGINT, EXIT_SIGTERM, Interrupts, command_console, exit_on_error
from .store_options import NoStoreOpt, ParquetOutOpt, QueryArg, SearchPromptOpt, StoreDirOpt, TopOpt
from .table import _PATH_BREAKS, BreakableCell

#: Failed images named one per line on stderr by ``search`` before "and N more".
_SHOWN_FAILURES = 5


def _config(params: dict[str, Any], retrieval: str, **fields: Any) -> RunConfig:
    """The ``RunConfig`` of a search / embed command from its parameters."""
    return RunConfig(task="classify", retrieval=retrieval, inputs=tuple(params["inputs"]), model=params["model"],
                     device=params["device"], dtype=params["dtype"].value, batch_size=params["batch_size"],
                     threads=params["threads"], decode_workers=params["workers"], recursive=params["recursive"],
                     follow_symlinks=params["follow_symlinks"], include_hidden=params["include_hidden"],
                     trust_remote_code=params["trust_remote_code"], allow_truncated=params["allow_truncated"],
                     max_pixels=params["max_pixels"], store=not params["no_store"], store_dir=params["store"],
                     backend=params["backend"].value, **fields)


@dataclass
class _Outcome:
    run: Any
    signum: int | None = None
    fault: WwtsError | None = None


def _run(config: RunConfig, quiet: bool, console: Console, each_batch: Callable[[Any, list], None]) -> _Outcome:
    """Start the engine (start line, model load) and give every batch of records to
    ``each_batch(run, records)`` while the progress bar advances; Ctrl-C / SIGTERM stop after the
    batch in flight.

    Raises:
        typer.Exit: a usage, model or device error before the first image (exit 2).
    """
    with exit_on_error(console):
        configure_libraries(config)
        from ..core import engine

        run = engine.start(config, loading=lambda facts: loading(console, quiet, facts))
    outcome = _Outcome(run)
    with Interrupts(run) as interrupts:
        try:
            with RunProgress(console, run.total, config.retrieval, quiet=quiet) as progress:
                for batch in run.batches():
                    each_batch(run, batch)
                    progress.advance(len(batch), sum(1 for r in batch if r.error))
        except WwtsError as exc:
            outcome.fault = exc
    outcome.signum = interrupts.signum
    return outcome


def _guarded(body: Callable[[Console], None]) -> None:
    """Run a command body inside ``run.command_console`` (process set-up, one line for the
    unexpected)."""
    with command_console() as console:
        body(console)


def _end(outcome: _Outcome, console: Console, images: int, errors: int, saved: Path | None) -> None:
    """The summary line and the exit code (interrupt, device fault, failed images).

    Raises:
        typer.Exit: when the exit code is not 0.
    """
    stats = outcome.run.stats
    if outcome.signum is not None:
        console.print(styled(("interrupted:", "yellow"), f" {stats.images} of {outcome.run.total} images done; "
                             "nothing was written"))
        raise typer.Exit(EXIT_SIGINT if outcome.signum == signal.SIGINT else EXIT_SIGTERM)
    if outcome.fault is not None:
        console.print(styled(("error:", "bold red"), f" {outcome.fault}"))
        raise typer.Exit(outcome.fault.exit_code)
    console.print(f"done: {images} images, {errors} errors, {stats.cached} embeddings reused from the store, "
                  f"{stats.seconds:.1f} s ({stats.images_per_s:.2f} images/s; model load {stats.load_s:.1f} s) on "
                  f"{stats.device}" + (f" → {saved}" if saved is not None else ""), soft_wrap=True)
    if errors:
        raise typer.Exit(EXIT_IMAGES_FAILED)


def search_table(records: list) -> Table:
    """``rank``, ``path``, ``score`` (cosine similarity) and ``size`` of the ranked records."""
    table = Table(show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("path")
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    for rank, r in enumerate(records, 1):
        table.add_row(str(rank), BreakableCell([r.path], breaks=_PATH_BREAKS), f"{r.score:.4f}",
                      f"{r.width}x{r.height}" if r.width else "")
    return table


def _name_failures(records: list, console: Console) -> None:
    failed = [r for r in records if r.error]
    for r in failed[:_SHOWN_FAILURES]:
        console.print(styled(("failed:", "red"), f" {shown(r.path)}: {shown(r.error)}"), soft_wrap=True)
    if len(failed) > _SHOWN_FAILURES:
        console.print(Text(f"… and {len(failed) - _SHOWN_FAILURES} more failed images"))


def search(
    query: QueryArg,
    inputs: InputsArg,
    top: TopOpt = 20,
    prompt: SearchPromptOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    recursive: RecursiveOpt = True,
    follow_symlinks: SymlinksOpt = False,
    include_hidden: HiddenOpt = False,
    allow_truncated: TruncOpt = False,
    max_pixels: MaxPixelsOpt = None,
    model: ClassifyModelOpt = None,
    device: ClassifyDeviceOpt = "auto",
    backend: BackendOpt = Backend.auto,
    dtype: DTypeOpt = DType.auto,
    batch_size: BatchOpt = None,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    trust_remote_code: TrustOpt = False,
    store: StoreDirOpt = None,
    no_store: NoStoreOpt = False,
) -> None:
    """Rank images by similarity to a text (help text: the registration's ``help``)."""
    params = dict(locals())

    def body(console: Console) -> None:
        from ..core.output import SearchResult, lock_output, open_writer

        with exit_on_error(console):
            if not query.strip():
                raise UsageError("the text to search for is empty")
            config = _config(params, "search", labels=(query.strip(),), prompt="" if prompt is None else prompt)
            lock = lock_output(out, inputs=config.inputs, overwrite=overwrite) if out is not None else nullcontext()
        with lock:
            records: list = []
            outcome = _run(config, quiet, console, lambda run, batch: records.extend(batch))
            ranked = sorted((r for r in records if not r.error), key=lambda r: -r.score)[:top]
            if outcome.signum is None and outcome.fault is None:
                if out is None:
                    DataConsole().print(search_table(ranked))
                else:
                    with exit_on_error(console):
                        writer = open_writer(out, SearchResult, outcome.run.info(), overwrite=overwrite)
                        writer.write(ranked)
                        writer.close({**outcome.run.info(), "top": top, "complete": True})
                _name_failures(records, console)
            _end(outcome, console, len(records), sum(1 for r in records if r.error), out)

    _guarded(body)


def embed(
    inputs: InputsArg,
    out: ParquetOutOpt,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    recursive: RecursiveOpt = True,
    follow_symlinks: SymlinksOpt = False,
    include_hidden: HiddenOpt = False,
    allow_truncated: TruncOpt = False,
    max_pixels: MaxPixelsOpt = None,
    model: ClassifyModelOpt = None,
    device: ClassifyDeviceOpt = "auto",
    backend: BackendOpt = Backend.auto,
    dtype: DTypeOpt = DType.auto,
    batch_size: BatchOpt = None,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    trust_remote_code: TrustOpt = False,
    store: StoreDirOpt = None,
    no_store: NoStoreOpt = False,
) -> None:
    """Export image embeddings to Parquet (help text: the registration's ``help``)."""
    params = dict(locals())

    def body(console: Console) -> None:
        from ..core.store import ParquetExport, require_pyarrow

        with exit_on_error(console):
            require_pyarrow()  # before the model loads: one line and exit 2 without it
            _check_parquet_out(out, overwrite)
            config = _config(params, "embed")
        export: list = []  # the ParquetExport, opened with the first batch (the model key is known then)
        counts = [0, 0]  # records, errors

        def write(run: Any, batch: list) -> None:
            if not export:
                export.append(ParquetExport(out, run.task.model_key_text() or ""))
            export[0].write([_row(r) for r in batch])
            counts[0], counts[1] = counts[0] + len(batch), counts[1] + sum(1 for r in batch if r.error)

        outcome = _run(config, quiet, console, write)
        if export:
            if outcome.signum is None and outcome.fault is None:
                export[0].close()
            else:
                export[0].abort()
        _end(outcome, console, counts[0], counts[1], out if export and outcome.signum is None else None)

    _guarded(body)


def _check_parquet_out(out: Path, overwrite: bool) -> None:
    """``--out`` must be a ``.parquet`` file that does not exist (unless ``--overwrite``).

    Raises:
        UsageError: another extension, a folder, or an existing file without ``--overwrite``.
    """
    if out.suffix.lower() != ".parquet":
        raise UsageError(f"--out {out}: wwts embed writes Parquet; name the file *.parquet")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder")
    if out.exists() and not overwrite:
        raise UsageError(f"--out {out} exists: add --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)


def _row(record: Any) -> dict[str, Any]:
    """One Parquet row (``core.store.export``) from an ``EmbeddingRecord``."""
    return {"path": record.path, "content_hash": record.content_hash, "embedding": record.embedding,
            "width": record.width, "height": record.height, "cached": record.cached, "error": record.error}
