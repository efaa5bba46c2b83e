"""Running ``wwts classify`` / ``wwts caption``: one ``RunConfig`` in, progress and a summary out.

``run_command`` sets up the process (``core.env``), locks ``--out``, plans a ``--resume``
(``core.output.plan_resume``), starts the engine, writes each batch as it comes while the
progress bar advances, and ends with a summary line and the exit code. All logic lives in
``wwts.core``. Every ``WwtsError`` becomes one red line on stderr and its exit code, in one
place (``fail``).

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
- 130 / 143: interrupted by Ctrl-C / SIGTERM (results so far are saved).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import typer
from rich.console import Console

from ..core import RunConfig, UsageError, WwtsError, configure_libraries, describe, dtype_name, prepare_environment
from .console import DataConsole, log_to, styled
from .after_run import AfterRun
from .progress import RunProgress, loading
from .table import print_records

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_IMAGES_FAILED, EXIT_DEVICE_FAULT = 0, 1, 2, 3, 4
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


@dataclass(frozen=True)
class OutputOptions:
    """Where the records go and how a run treats an existing ``--out`` (the CLI's Output and
    Runs options; ``RunConfig`` holds what decides the records themselves).

    Attributes:
        out: ``.csv``, ``.json`` or ``.jsonl`` file; ``None`` prints a table on stdout.
        overwrite: replace an existing ``out``.
        resume: skip the images already in ``out`` and append the others.
        retry_failed: also process again the images whose record in ``out`` is an error.
        quiet: no start line and no progress (the summary still shows errors and exit codes).
        report: write an HTML contact sheet of the results here at the end (``--report``).
        write_xmp: write each photo's XMP sidecar as its batch finishes (``--write-xmp``).
        xmp_name: sidecar naming, ``append`` (``IMG_1.jpg.xmp``) or ``replace`` (``IMG_1.xmp``).
    """

    out: Path | None = None
    overwrite: bool = False
    resume: bool = False
    retry_failed: bool = False
    quiet: bool = False
    report: Path | None = None
    write_xmp: bool = False
    xmp_name: str = "append"

    @property
    def continues(self) -> bool:
        """True when the run continues an existing ``out`` (``--resume`` or ``--retry-failed``)."""
        return self.resume or self.retry_failed


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


def resume_command(argv: list[str]) -> str:
    """The command line that resumes this run: the same arguments, ``--resume`` instead of ``--overwrite``."""
    args = [a for a in argv if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["wwts", *args])


class Interrupts:
    """SIGINT / SIGTERM: the first asks the run to stop after the batch in flight; a second exits at once.

    Args:
        run: anything with a ``stop()`` method (the engine's ``Run``).

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


def run_command(config: RunConfig, options: OutputOptions) -> None:
    """Run ``config`` (classify or caption) from the command line, to its exit code.

    Process-wide settings are made here (``core.env``), ``--out`` is checked and locked before
    the model loads and stays locked for the whole run, results so far are saved on Ctrl-C,
    SIGTERM or a device fault, and the summary line goes to stderr.

    Raises:
        typer.Exit: with the exit code of the module docstring, unless it is 0.
    """
    from ..core.output import lock_output

    with command_console() as console:
        with exit_on_error(console):
            after = AfterRun(options, console, config.inputs)  # checks --report before the model loads
            lock = lock_output(options.out, inputs=config.inputs, overwrite=options.overwrite,
                               resume=options.continues)
        with lock:
            started = _start(config, options, console)
            if started is not None:
                outcome = _stream(*started, config.task, options.quiet, console, after_batch=after.batch)
                after.finish(outcome.run, outcome.writer, outcome.table_records)
                _summarize(outcome, config.task, options, console)


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


def _start(config: RunConfig, options: OutputOptions, console: Console) -> tuple[Any, Any] | None:
    """Everything before the first image: check the options and ``--out``, set the libraries up,
    plan a resume, load the model (``engine.start``), open the writer.

    Returns:
        ``(run, writer)`` (``writer`` is ``None`` without ``--out``), or ``None`` when a resumed
        run has nothing left to do.

    Raises:
        typer.Exit: a ``WwtsError`` (exit 2 for the usage, model, device and output errors).
    """
    from ..core.output import CaptionResult, ClassifyResult

    record_type = ClassifyResult if config.task == "classify" else CaptionResult
    out = options.out
    with exit_on_error(console):
        _check_options(config, options)
        configure_libraries(config)
        from ..core import engine
        from ..core.output import check_settings, drop_records, open_writer

        plan = _plan_resume(config, options, record_type, console) if options.continues else None
        if plan is not None and not plan.paths:
            return None
        start = engine.start
        if config.ray is not None:  # the same run on a Ray cluster; Ray is imported only here
            from ..core import cluster

            start = cluster.start
        run = start(config, paths=plan.paths if plan else None,
                    loading=lambda facts: loading(console, options.quiet, facts))
        check_settings(out, plan.old_run if plan else None, run.info())
        if options.retry_failed and plan and plan.failed:
            drop_records(out, record_type, plan.failed)
        writer = open_writer(out, record_type, run.info(), overwrite=options.overwrite,
                             resume=options.continues) if out is not None else None
    return run, writer


def _check_options(config: RunConfig, options: OutputOptions) -> None:
    """Refuse option combinations and an ``--out`` that cannot be right, before anything loads.

    Raises:
        UsageError: ``--resume`` / ``--retry-failed`` without ``--out`` or with ``--overwrite``,
            an ``--out`` extension other than .csv/.json/.jsonl, an ``--out`` that is an input image.
    """
    from ..core.output import output_format

    if options.continues and options.out is None:
        raise UsageError("--resume and --retry-failed need --out FILE")
    if options.continues and options.overwrite:
        raise UsageError("--overwrite starts over; --resume / --retry-failed continue: choose one")
    if options.out is not None:
        output_format(options.out)  # reject a bad extension before loading the model
        resolved = options.out.resolve()
        if any(resolved == Path(p).resolve() for p in config.inputs if Path(p).is_file()):
            raise UsageError(f"--out {options.out} is one of the input images")


def _plan_resume(config: RunConfig, options: OutputOptions, record_type: type, console: Console):
    """``core.output.plan_resume`` for this run: the images not yet in ``--out`` (with
    ``--retry-failed``, also those whose record is an error); says so when none is left.

    Raises:
        UsageError: see ``plan_resume``.
    """
    from ..core import engine, models
    from ..core.output import plan_resume

    found = engine.find_images(config)
    settings = config.resume_settings(models.model_for(config.task, config.lang, config.model))
    plan = plan_resume(options.out, record_type, found, settings, retry_failed=options.retry_failed)
    if not plan.paths:
        console.print(f"nothing to do: all {len(found)} images are already in {options.out}", soft_wrap=True)
    return plan


@dataclass
class _Outcome:
    """What the batch loop leaves for the summary."""

    run: Any
    writer: Any
    table_records: list = field(default_factory=list)
    fault: WwtsError | None = None
    signum: int | None = None


def _stream(run, writer, task: str, quiet: bool, console: Console, after_batch=None) -> _Outcome:
    """The batch loop: each batch to the writer (or kept for the table) while the progress bar
    advances; Ctrl-C / SIGTERM stop after the batch in flight; the writer is closed whatever
    happens (``complete`` only when every image was done and nothing failed)."""
    outcome = _Outcome(run, writer)
    with Interrupts(run) as interrupts:
        try:
            with RunProgress(console, run.total, task, quiet=quiet) as progress:
                for batch in run.batches():
                    if writer is not None:
                        writer.write(batch)
                    else:
                        outcome.table_records.extend(batch)
                    progress.advance(len(batch), sum(1 for r in batch if r.error))
                    if after_batch is not None:
                        after_batch(batch)
        except WwtsError as exc:
            outcome.fault = exc
        finally:
            if writer is not None:
                try:
                    writer.close({**run.info(), "complete": run.stats.images == run.total and outcome.fault is None})
                except WwtsError as exc:
                    outcome.fault = outcome.fault or exc
    outcome.signum = interrupts.signum
    return outcome


def _summarize(outcome: _Outcome, task: str, options: OutputOptions, console: Console) -> None:
    """The table (without ``--out``), the interrupt and error lines, ``done: ...``, how to finish
    an unfinished run, then the exit code.

    Raises:
        typer.Exit: when the exit code is not 0.
    """
    run, writer, out = outcome.run, outcome.writer, options.out
    if outcome.table_records:
        print_records(outcome.table_records, task)
    stats = run.stats
    exit_code = EXIT_OK
    if outcome.signum is not None:
        exit_code = EXIT_SIGINT if outcome.signum == signal.SIGINT else EXIT_SIGTERM
        console.print(styled(("interrupted:", "yellow"), f" {stats.images} of {run.total} images done"))
    if outcome.fault is not None:
        console.print(styled(("error:", "bold red"), f" {outcome.fault}"))
        exit_code = outcome.fault.exit_code
    # with --out, count only the records really written (not a batch whose write failed)
    images, errors = ((writer.written, writer.written_errors) if writer is not None
                      else (stats.images, stats.errors))
    saved = writer.saved_path if writer is not None else out  # x.json.partial.jsonl when x.json was not published
    if not options.quiet or errors or exit_code:
        console.print(
            f"done: {images} images, {errors} errors, "
            + (f"{stats.cached} embeddings reused from the store, " if getattr(stats, "cached", 0) else "")
            + f"{stats.seconds:.1f} s "
            f"({stats.images_per_s:.2f} images/s; model load {stats.load_s:.1f} s) on {stats.device} "
            f"{dtype_name(run.dtype)}, final batch size {stats.batch_size}"
            + (f" → {saved}" if out is not None else ""))
    if exit_code != EXIT_OK and images < run.total:
        if out is not None:
            console.print(f"results so far are saved in {saved}; to finish the run: "
                          f"{resume_command(sys.argv[1:])}", soft_wrap=True, markup=False)
        else:
            console.print("nothing was saved (no --out)", soft_wrap=True)
    if exit_code == EXIT_OK and errors:
        exit_code = EXIT_IMAGES_FAILED
    if exit_code != EXIT_OK:
        raise typer.Exit(exit_code)
