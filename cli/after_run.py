"""What ``--write-xmp`` and ``--report`` add to a classify / caption run.

``AfterRun`` checks the two options before the model loads, writes each batch's XMP sidecars as
the batch finishes (``core.xmp.SidecarTagger``: a sidecar that cannot be written is one yellow
line and the run goes on), and at the end of the run (finished, interrupted or stopped by a
device fault) writes the HTML report of everything ``--out`` holds, or of the records of this
run when there is no ``--out``. Writing the report never changes the run's exit code; a report
that cannot be written is one red line.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..core import UsageError, WwtsError
from .console import styled

REPORT_SUFFIXES = (".html", ".htm")


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


class AfterRun:
    """The ``--write-xmp`` and ``--report`` steps of one run (``options`` is the run's ``OutputOptions``).

    Raises:
        UsageError: from the constructor, for a bad ``--report`` path (before the model loads).
    """

    def __init__(self, options, console: Console, inputs=()) -> None:
        self.options = options
        self.console = console
        self.tagger = None
        if options.report is not None:
            check_report_path(options.report, results=options.out, inputs=inputs)
        if options.write_xmp:
            from ..core.xmp import SidecarTagger

            self.tagger = SidecarTagger(naming=options.xmp_name)

    def batch(self, records) -> None:
        """Write the sidecars of one batch's records (``--write-xmp``)."""
        if self.tagger is None:
            return
        for line in self.tagger.write(records):
            self.console.print(styled(("warning:", "yellow"), " ", line), soft_wrap=True)

    def finish(self, run, writer, table_records) -> None:
        """The XMP summary line, then the report (``--report``) of the run's results."""
        if self.tagger is not None and (not self.options.quiet or self.tagger.failed):
            self.console.print(self.tagger.summary(), soft_wrap=True)
        if self.options.report is None:
            return
        from ..core.output import Results, read_results
        from ..core.report import write_report

        try:
            if writer is not None:
                results = read_results(self.options.out)
            else:
                info = run.info()
                results = Results(path=Path("results"), task=info.get("task", "classify"), run=info,
                                  records=[r.to_dict() for r in table_records])
            made = write_report(results, self.options.report)
        except WwtsError as exc:
            self.console.print(styled(("error:", "bold red"), f" report not written: {exc}"), soft_wrap=True)
            return
        if not self.options.quiet:
            self.console.print(f"report: {made.cards} records ({made.errors} errors) → {made.page}", soft_wrap=True)
