"""The one run loop of ``wwts classify``, ``caption``, ``search`` and ``embed``: one ``RunConfig``
and a record sink in, progress and a summary out.

``run_records`` sets up the process (``core.env``), has the sink check its options and lock its
output, starts the engine (``engine.start``, or ``cluster.start`` with ``--ray``), gives each
batch to the sink as it comes while the progress bar advances, and ends with a summary line and
the exit code. The sinks (``cli/sinks.py``) say where records go: a results file or table, the
ranked search results, a Parquet export. All logic lives in ``wwts.core``. Every ``WwtsError``
becomes one red line on stderr and its exit code, in one place (``fail``).

Everything shown is data, never rich markup: consoles are ``cli.console.DataConsole`` (paths,
labels and messages literal, control characters escaped), colour comes from ``Text`` objects.

Exit codes (the README lists the same):

- 0: success (also "nothing to do" on ``--resume``);
- 1: an unexpected error (a bug: one line, ``WWTS_DEBUG=1`` shows the traceback), or results
  that could not be written mid-run (disk full: the message names the file holding the records);
- 2: usage, model, device or output error (bad option, no images, model not found, an ``--out``
  that cannot be created, is locked by another run, or is corrupt on ``--resume``...), found
  before any image is processed;
- 3: the run finished but some images failed (their records hold the error);
- 4: the device failed mid-run (results so far are saved);
- 130 / 143: interrupted by Ctrl-C / SIGTERM (classify and caption: results so far are saved;
  search and embed publish nothing).
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Any, Iterator

import typer
from rich.console import Console

from ..core import RunConfig, WwtsError, configure_libraries, describe, dtype_name, prepare_environment
from .console import DataConsole, log_to, styled
from .progress import RunProgress, loading

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_IMAGES_FAILED, EXIT_DEVICE_FAULT = 0, 1, 2, 3, 4
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


def fail(exc: WwtsError, console: Console | None = None) -> typer.Exit:
    """Print ``error: MESSAGE`` in red on ``console`` (stderr by default); return the
    ``typer.Exit`` carrying the error's exit code, for the caller to raise."""
    console = console or DataConsole(stderr=True)
    console.print(styled(("error:", "bold red"), " ", str(exc)))
    return typer.Exit(exc.exit_code)


@contextmanager
def exit_on_error(console: Console | None = None) -> Iterator[None]:
    """Turn a ``WwtsError`` raised inside the block into one red line and ``typer.Exit(code)``.

    Raises:
        typer.Exit: with the error's ``exit_code``.
    """
    try:
        yield
    except WwtsError as exc:
        raise fail(exc, console) from None


class Interrupts:
    """SIGINT / SIGTERM: the first asks the run to stop after the batch in flight; a second exits at once.

    Args:
        run: anything with a ``stop()`` method (the engine's ``Runner``).

    Attributes:
        signum: the first signal received, ``None`` while there was none.
    """

    def __init__(self, run) -> None:
        self.run = run
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            # Second signal: exit now. Decode worker processes go first, or they would outlive
            # us and hold the terminal (and a `| tee`) open.
            import multiprocessing

            for child in multiprocessing.active_children():
                child.kill()
            os._exit(128 + signum)
        self.signum = signum
        self.run.stop()

    def __enter__(self) -> "Interrupts":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (embedded use): keep the default handlers
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self.signum is not None:
            return  # stopping anyway: a second signal during the summary must still exit at once
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_records(config: RunConfig, sink: Any) -> None:
    """Run ``config`` (classify, caption, search or embed) from the command line, to its exit code.

    Process-wide settings are made here (``core.env``); the sink's checks run and its output is
    locked before the model loads (``cli.sinks``: ``check``, ``lock``); each batch of records goes
    to the sink while the progress bar advances; Ctrl-C, SIGTERM or a device fault end the run with
    the records so far handed on; the summary line goes to stderr.

    Raises:
        typer.Exit: with the exit code of the module docstring, unless it is 0.
    """
    with command_console() as console:
        with exit_on_error(console):
            sink.check(config, console)
            lock = sink.lock(config)
        with lock:
            runner = _start(config, sink, console)
            if runner is None:
                return
            fault, signum = _stream(runner, sink, config.head or config.task, console)
            with exit_on_error(console):
                sink.finish(runner, finished=fault is None and signum is None)
            _summarize(runner, sink, fault, signum, console)


@contextmanager
def command_console() -> Iterator[Console]:
    """The set-up every command that runs the model shares: process-wide settings
    (``core.env.prepare_environment``, before torch is imported), a stderr ``DataConsole`` that the
    ``wwts`` loggers print to, and one line instead of a traceback for what escapes the command.

    Raises:
        typer.Exit: 130 on a Ctrl-C outside the batch loop (model loading, writing a table); 1
            with one red line for an unexpected exception (``WWTS_DEBUG=1`` re-raises it).
    """
    prepare_environment()
    console = DataConsole(stderr=True)
    log_to(console)
    try:
        yield console
    except KeyboardInterrupt:
        console.print(styled(("interrupted", "yellow")))
        raise typer.Exit(EXIT_SIGINT)
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # a bug or an unforeseen library error: one line, not a traceback
        if os.environ.get("WWTS_DEBUG"):
            raise
        console.print(styled(("unexpected error:", "bold red"), f" {describe(exc, whole=True)} "
                             "(set WWTS_DEBUG=1 to see the traceback, and please report it)"))
        raise typer.Exit(EXIT_ERROR)


def _start(config: RunConfig, sink: Any, console: Console) -> Any:
    """Everything before the first image: set the libraries up, ask the sink which images
    (``prepare``: a ``--resume`` plan), load the model (``engine.start``, or ``cluster.start``
    with ``--ray``), open the sink on the runner.

    Returns:
        The ``engine.Runner``, or ``None`` when a resumed run has nothing left to do.

    Raises:
        typer.Exit: a ``WwtsError`` (exit 2 for the usage, model, device and output errors).
    """
    with exit_on_error(console):
        configure_libraries(config)
        from ..core import engine

        paths = sink.prepare(config)
        if paths is not None and not paths:
            return None
        start = engine.start
        if config.ray is not None:  # the same run on a Ray cluster; Ray is imported only here
            from ..core import cluster

            start = cluster.start
        runner = start(config, paths=paths, loading=lambda plan: loading(console, sink.quiet, plan))
        sink.open(runner)
    return runner


def _stream(runner: Any, sink: Any, name: str, console: Console) -> tuple[WwtsError | None, int | None]:
    """The batch loop: each batch to the sink while the progress bar (``name``) advances; Ctrl-C
    / SIGTERM stop after the batch in flight; the sink is closed whatever happens (``complete``
    only when every image was done and nothing failed).

    Returns:
        ``(fault, signum)``: the ``WwtsError`` that ended the run early (a device fault, a write
        that failed), and the first signal received; ``None`` each when there was none.
    """
    fault: WwtsError | None = None
    with Interrupts(runner) as interrupts:
        try:
            with RunProgress(console, runner.total, name, quiet=sink.quiet) as progress:
                for batch in runner.batches():
                    sink.write(batch)
                    progress.advance(len(batch), sum(1 for r in batch if r.error))
        except WwtsError as exc:
            fault = exc
        finally:
            try:
                sink.close(runner, complete=runner.stats.images == runner.total and fault is None,
                           interrupted=interrupts.signum is not None)
            except WwtsError as exc:
                fault = fault or exc
    return fault, interrupts.signum


def _summarize(runner: Any, sink: Any, fault: WwtsError | None, signum: int | None, console: Console) -> None:
    """The interrupt and error lines, ``done: ...``, what became of an unfinished run (the sink's
    ``unfinished``), then the exit code.

    Raises:
        typer.Exit: when the exit code is not 0.
    """
    stats = runner.stats
    exit_code = EXIT_OK
    if signum is not None:
        exit_code = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM
        console.print(styled(("interrupted:", "yellow"), f" {stats.images} of {runner.total} images done"))
    if fault is not None:
        console.print(styled(("error:", "bold red"), f" {fault}"))
        exit_code = fault.exit_code
    images, errors = sink.counts(runner)  # with --out, only the records really written
    saved = sink.saved()
    if not sink.quiet or errors or exit_code:
        console.print(
            f"done: {images} images, {errors} errors, "
            + (f"{stats.cached} embeddings reused from the store, " if stats.cached else "")
            + f"{stats.seconds:.1f} s "
            f"({stats.images_per_s:.2f} images/s; model load {stats.load_s:.1f} s) on {stats.device} "
            f"{dtype_name(runner.dtype)}, final batch size {stats.batch_size}"
            + (f" → {saved}" if saved is not None else ""))
    if exit_code != EXIT_OK and images < runner.total:
        console.print(sink.unfinished(), soft_wrap=True, markup=False)
    if exit_code == EXIT_OK and errors:
        exit_code = EXIT_IMAGES_FAILED
    if exit_code != EXIT_OK:
        raise typer.Exit(exit_code)
