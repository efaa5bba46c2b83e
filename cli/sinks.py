"""Where a run's records go: the record sinks of the one run loop (``run_loop.run_records``).

- ``ResultsSink`` (classify, caption): ``--out`` (CSV, JSON, JSONL, written as each batch comes,
  ``--resume``-able) or a table on stdout, each photo's XMP sidecar as its batch finishes
  (``--write-xmp``: a sidecar that cannot be written is one yellow line and the run goes on), and
  at the end (finished, interrupted or stopped by a device fault) the HTML report (``--report``)
  of everything ``--out`` holds, or of this run's records without ``--out``; a report that cannot
  be written is one red line and never changes the exit code.
- ``SearchSink`` (search): collects the records, then ranks them and prints or writes the best.
- ``EmbedSink`` (embed): streams one Parquet row per image; published only when the run finished.

Every sink answers the loop in the same words, in this order: ``check(config, console)`` (its
options, before anything loads; ``UsageError``), ``lock(config)`` (a context manager held for the
run), ``prepare(config)`` (the images to do: ``None`` to discover them, ``[]`` for nothing to do),
``open(runner)``, ``write(batch)`` per batch, ``close(runner, complete, interrupted)`` whatever
happens, ``finish(runner, finished)``, then for the summary ``counts(runner)`` (images, errors
written), ``saved()`` (the file now holding them, or ``None``) and ``unfinished()`` (a line saying
what became of an unfinished run). ``quiet``: no start line, progress or "done" when all went well.
"""

from __future__ import annotations

import shlex
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..core import RunConfig, UsageError, WwtsError
from .console import DataConsole, shown, styled
from .table import _PATH_BREAKS, BreakableCell, print_records

REPORT_SUFFIXES = (".html", ".htm")
#: Failed images named one per line on stderr by ``search`` before "and N more".
SHOWN_FAILURES = 5


def check_report_path(report: Path, *, results: Path | None = None, inputs=()) -> None:
    """Refuse a report path that is not ``.html``/``.htm``, is a folder, or is the results file or
    an input image.

    Raises:
        UsageError: as above (exit code 2).
    """
    if report.suffix.lower() not in REPORT_SUFFIXES:
        raise UsageError(f"--report {report}: the report is an HTML page, give a name ending in .html")
    if report.is_dir():
        raise UsageError(f"--report {report} is a folder; give a file name ending in .html")
    resolved = report.resolve()
    if results is not None and resolved == Path(results).resolve():
        raise UsageError(f"--report {report} is the results file itself")
    if any(resolved == Path(p).resolve() for p in inputs if Path(p).is_file()):
        raise UsageError(f"--report {report} is one of the input images")


def resume_command(argv: list[str]) -> str:
    """The command line that resumes this run: the same arguments, ``--resume`` instead of ``--overwrite``."""
    args = [a for a in argv if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["wwts", *args])


@dataclass
class ResultsSink:
    """The records of a classify / caption run, and how it treats an existing ``--out``.

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
    writer: Any = field(default=None, init=False)
    table: list = field(default_factory=list, init=False)
    tagger: Any = field(default=None, init=False)
    console: Any = field(default=None, init=False)
    plan: Any = field(default=None, init=False)
    record_type: Any = field(default=None, init=False)

    @property
    def continues(self) -> bool:
        """True when the run continues an existing ``out`` (``--resume`` or ``--retry-failed``)."""
        return self.resume or self.retry_failed

    def check(self, config: RunConfig, console: Console) -> None:
        """Check ``--report`` (before the model loads) and make the XMP tagger."""
        self.console = console
        if self.report is not None:
            check_report_path(self.report, results=self.out, inputs=config.inputs)
        if self.write_xmp:
            from ..core.xmp import SidecarTagger

            self.tagger = SidecarTagger(naming=self.xmp_name)

    def lock(self, config: RunConfig) -> Any:
        """``core.output.lock_output``: ``out`` can be created and no other run writes it."""
        from ..core.output import lock_output

        return lock_output(self.out, inputs=config.inputs, overwrite=self.overwrite, resume=self.continues)

    def prepare(self, config: RunConfig) -> list[Path] | None:
        """Refuse option combinations that cannot be right; with ``--resume`` / ``--retry-failed``
        the images not yet in ``out`` (``[]``, and a line saying so, when none is left).

        Raises:
            UsageError: ``--resume`` / ``--retry-failed`` without ``--out`` or with ``--overwrite``,
                an ``--out`` extension other than .csv/.json/.jsonl, an ``--out`` that is an input image.
            UsageError: a corrupt ``out`` (``core.output.plan_resume``).
        """
        from ..core import engine, models
        from ..core.output import CaptionResult, ClassifyResult, output_format, plan_resume

        self.record_type = ClassifyResult if config.task == "classify" else CaptionResult
        if self.continues and self.out is None:
            raise UsageError("--resume and --retry-failed need --out FILE")
        if self.continues and self.overwrite:
            raise UsageError("--overwrite starts over; --resume / --retry-failed continue: choose one")
        if self.out is not None:
            output_format(self.out)  # reject a bad extension before loading the model
            resolved = self.out.resolve()
            if any(resolved == Path(p).resolve() for p in config.inputs if Path(p).is_file()):
                raise UsageError(f"--out {self.out} is one of the input images")
        if not self.continues:
            return None
        found = engine.find_images(config)
        settings = config.resume_settings(models.model_for(config.task, config.lang, config.model))
        self.plan = plan_resume(self.out, self.record_type, found, settings, retry_failed=self.retry_failed)
        if not self.plan.paths:
            self.console.print(f"nothing to do: all {len(found)} images are already in {self.out}", soft_wrap=True)
        return self.plan.paths

    def open(self, runner: Any) -> None:
        """Check a resumed ``out``'s settings against this run's, drop the records
        ``--retry-failed`` redoes, and open the writer."""
        from ..core.output import check_settings, drop_records, open_writer

        check_settings(self.out, self.plan.old_run if self.plan else None, runner.info())
        if self.retry_failed and self.plan and self.plan.failed:
            drop_records(self.out, self.record_type, self.plan.failed)
        if self.out is not None:
            self.writer = open_writer(self.out, self.record_type, runner.info(), overwrite=self.overwrite,
                                      resume=self.continues)

    def write(self, batch: list) -> None:
        """One batch to the writer (or kept for the table), then its XMP sidecars."""
        if self.writer is not None:
            self.writer.write(batch)
        else:
            self.table.extend(batch)
        if self.tagger is not None:
            for line in self.tagger.write(batch):
                self.console.print(styled(("warning:", "yellow"), " ", line), soft_wrap=True)

    def close(self, runner: Any, complete: bool, interrupted: bool) -> None:
        """Close the writer with the final ``run`` section (``complete``: every image done, no fault)."""
        if self.writer is not None:
            self.writer.close({**runner.info(), "complete": complete})

    def finish(self, runner: Any, finished: bool) -> None:
        """The XMP summary line, the report (``--report``), then the table (without ``--out``)."""
        if self.tagger is not None and (not self.quiet or self.tagger.failed):
            self.console.print(self.tagger.summary(), soft_wrap=True)
        if self.report is not None:
            self._write_report(runner)
        if self.table:
            print_records(self.table, runner.config.task)

    def _write_report(self, runner: Any) -> None:
        from ..core.output import Results, read_results
        from ..core.report import write_report

        try:
            if self.writer is not None:
                results = read_results(self.out)
            else:
                info = runner.info()
                results = Results(path=Path("results"), task=info.get("task", "classify"), run=info,
                                  records=[r.to_dict() for r in self.table])
            made = write_report(results, self.report)
        except WwtsError as exc:
            self.console.print(styled(("error:", "bold red"), f" report not written: {exc}"), soft_wrap=True)
            return
        if not self.quiet:
            self.console.print(f"report: {made.cards} records ({made.errors} errors) → {made.page}", soft_wrap=True)

    def counts(self, runner: Any) -> tuple[int, int]:
        """Images and errors: with ``--out`` only the records really written (not a batch whose write failed)."""
        if self.writer is not None:
            return self.writer.written, self.writer.written_errors
        return runner.stats.images, runner.stats.errors

    def saved(self) -> Path | None:
        """The file holding the records (``x.json.partial.jsonl`` when ``x.json`` was not published)."""
        return self.writer.saved_path if self.writer is not None else None

    def unfinished(self) -> str:
        """Where the records so far are and how to finish the run."""
        if self.out is None:
            return "nothing was saved (no --out)"
        return f"results so far are saved in {self.saved()}; to finish the run: {resume_command(sys.argv[1:])}"


@dataclass
class SearchSink:
    """``wwts search``: every record kept; at the end, if the run finished, the best ``top`` by
    score (cosine similarity) as a table on stdout or in ``out`` (CSV, JSON, JSONL: ``path``,
    ``score``, ``width``, ``height``), and the failed images named on stderr."""

    top: int
    out: Path | None = None
    overwrite: bool = False
    quiet: bool = False
    records: list = field(default_factory=list, init=False)
    console: Any = field(default=None, init=False)
    written: bool = field(default=False, init=False)

    def check(self, config: RunConfig, console: Console) -> None:
        self.console = console

    def lock(self, config: RunConfig) -> Any:
        from ..core.output import lock_output

        return lock_output(self.out, inputs=config.inputs, overwrite=self.overwrite) if self.out is not None \
            else nullcontext()

    def prepare(self, config: RunConfig) -> None:
        return None

    def open(self, runner: Any) -> None:
        return None

    def write(self, batch: list) -> None:
        self.records.extend(batch)

    def close(self, runner: Any, complete: bool, interrupted: bool) -> None:
        return None

    def finish(self, runner: Any, finished: bool) -> None:
        """Rank, then show or write the best ``top``; name the failed images.

        Raises:
            UsageError: ``out`` cannot be written.
        """
        if not finished:
            return
        from ..core.output import SearchResult, open_writer

        ranked = sorted((r for r in self.records if not r.error), key=lambda r: -r.score)[:self.top]
        if self.out is None:
            DataConsole().print(search_table(ranked))
        else:
            writer = open_writer(self.out, SearchResult, runner.info(), overwrite=self.overwrite)
            writer.write(ranked)
            writer.close({**runner.info(), "top": self.top, "complete": True})
            self.written = True
        failed = [r for r in self.records if r.error]
        for r in failed[:SHOWN_FAILURES]:
            self.console.print(styled(("failed:", "red"), f" {shown(r.path)}: {shown(r.error)}"), soft_wrap=True)
        if len(failed) > SHOWN_FAILURES:
            self.console.print(Text(f"… and {len(failed) - SHOWN_FAILURES} more failed images"))

    def counts(self, runner: Any) -> tuple[int, int]:
        return len(self.records), sum(1 for r in self.records if r.error)

    def saved(self) -> Path | None:
        return self.out if self.written else None

    def unfinished(self) -> str:
        return "nothing was written"


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


@dataclass
class EmbedSink:
    """``wwts embed``: one Parquet row per image in ``out`` (``core.store.ParquetExport``, opened
    with the first batch), published when the run finished, else removed."""

    out: Path
    overwrite: bool = False
    quiet: bool = False
    export: Any = field(default=None, init=False)
    runner: Any = field(default=None, init=False)
    published: bool = field(default=False, init=False)

    def check(self, config: RunConfig, console: Console) -> None:
        """pyarrow is installed, ``out`` is a ``.parquet`` file that does not exist (unless
        ``--overwrite``); its folder is made.

        Raises:
            UsageError: pyarrow missing (one line), another extension, a folder, an existing file.
        """
        from ..core.store import require_pyarrow

        require_pyarrow()
        if self.out.suffix.lower() != ".parquet":
            raise UsageError(f"--out {self.out}: wwts embed writes Parquet; name the file *.parquet")
        if self.out.is_dir():
            raise UsageError(f"--out {self.out} is a folder")
        if self.out.exists() and not self.overwrite:
            raise UsageError(f"--out {self.out} exists: add --overwrite to replace it")
        self.out.parent.mkdir(parents=True, exist_ok=True)

    def lock(self, config: RunConfig) -> Any:
        return nullcontext()

    def prepare(self, config: RunConfig) -> None:
        return None

    def open(self, runner: Any) -> None:
        self.runner = runner

    def write(self, batch: list) -> None:
        if self.export is None:  # the model key is known once the first batch ran
            from ..core.store import ParquetExport

            self.export = ParquetExport(self.out, self.runner.task.model_key_text() or "")
        self.export.write([{"path": r.path, "content_hash": r.content_hash, "embedding": r.embedding,
                            "width": r.width, "height": r.height, "cached": r.cached, "error": r.error}
                           for r in batch])

    def close(self, runner: Any, complete: bool, interrupted: bool) -> None:
        if self.export is None:
            return
        if complete and not interrupted:
            self.export.close()
            self.published = True
        else:
            self.export.abort()

    def finish(self, runner: Any, finished: bool) -> None:
        return None

    def counts(self, runner: Any) -> tuple[int, int]:
        return runner.stats.images, runner.stats.errors

    def saved(self) -> Path | None:
        return self.out if self.published else None

    def unfinished(self) -> str:
        return "nothing was written"
