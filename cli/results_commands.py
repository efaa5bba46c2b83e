"""``wwts report`` and ``wwts sort``: act on a results file (CSV, JSON or JSONL) after a run.

Exit codes: 0 success (a dry run included); 2 usage errors (bad option, unreadable results,
a caption results file given to ``sort``); 3 some changes of ``sort`` (or its undo) failed, the
others were made; 130 interrupted (``sort``: the undo command is printed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core import UsageError
from .sinks import check_report_path
from .console import DataConsole, styled
from .run_loop import EXIT_IMAGES_FAILED, EXIT_SIGINT, exit_on_error

ResultsArg = Annotated[Optional[Path], typer.Argument(help="A results file of wwts classify/caption "
                                                           "(.csv, .json or .jsonl).", show_default=False,
                                                      metavar="RESULTS")]

REPORT_HELP = ("An HTML contact sheet of a results file: thumbnails, labels with scores, captions, a label "
               "filter, a sort by score and the error records. No network, no framework: open it in a browser.")
REPORT_EXAMPLES = """Examples:

wwts report results.jsonl --out report.html

wwts report results.csv --embed --out report.html

Open report.html#label=猫&sort=score-desc for one label, best first."""

SORT_HELP = ("Sort photos into one folder per label (each photo under every label it has). A dry run by "
             "default: it prints what it would do; --yes does it, and writes an undo log.")
SORT_EXAMPLES = """Examples:

wwts sort results.jsonl --into sorted

wwts sort results.jsonl --into sorted --copy --yes

wwts sort results.jsonl --into sorted --move --yes

wwts sort --undo sorted/.wwts-sort-20250101-120000.jsonl"""


def report(
    results: ResultsArg,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="The page to write.",
                                                show_default="RESULTS with .html")] = None,
    embed: Annotated[bool, typer.Option("--embed", help=(
        "Thumbnails inside the page (one file to send) instead of in a folder beside it."))] = False,
    thumb_size: Annotated[int, typer.Option("--thumb-size", min=32, max=1024,
                                            help="Long side of a thumbnail, in pixels.")] = 256,
) -> None:
    """Write the HTML report of a results file (help text: the registration's ``help``)."""
    from ..core.output import read_results
    from ..core.report import write_report

    console = DataConsole(stderr=True)
    with exit_on_error(console):
        if results is None:
            raise UsageError("give the results file: wwts report results.jsonl --out report.html")
        page = out or results.with_suffix(".html")
        check_report_path(page, results=results)
        made = write_report(read_results(results), page, embed=embed, size=thumb_size)
    where = "" if made.folder is None else f" (thumbnails in {made.folder})"
    console.print(f"report: {made.cards} records, {made.errors} errors → {made.page}{where}", soft_wrap=True)
    if made.without_thumb:
        console.print(f"{made.without_thumb} photos have no preview (moved, deleted or unreadable since the run)",
                      soft_wrap=True)


def _mode(link: bool, copy: bool, move: bool) -> str:
    chosen = [name for name, on in (("link", link), ("copy", copy), ("move", move)) if on]
    if len(chosen) > 1:
        raise UsageError("choose one of --link, --copy and --move")
    return chosen[0] if chosen else "link"


def _undo(log: Path, console) -> None:
    from ..core.sort import undo

    with exit_on_error(console):
        done = undo(log)
    for what, why in done.failed:
        console.print(styled(("failed:", "red"), f" {what}: {why}"), soft_wrap=True)
    console.print(f"undo: {done.done} changes reverted, {len(done.failed)} failed"
                  + ("" if done.failed else f"; the log is now {log}.undone"), soft_wrap=True)
    if done.failed:
        raise typer.Exit(EXIT_IMAGES_FAILED)


def sort(
    results: ResultsArg = None,
    into: Annotated[Optional[Path], typer.Option("--into", help="Folder that gets one folder per label.")] = None,
    link: Annotated[bool, typer.Option("--link", help="Symbolic links to the photos (the default).")] = False,
    copy: Annotated[bool, typer.Option("--copy", help="Copies of the photos.")] = False,
    move: Annotated[bool, typer.Option("--move", help=(
        "Move each photo under its best label (links from its other labels); never overwrites."))] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do it (without it: a dry run).")] = False,
    undo_log: Annotated[Optional[Path], typer.Option("--undo", metavar="LOG", help=(
        "Revert an earlier sort from its undo log."))] = None,
) -> None:
    """Sort photos into label folders (help text: the registration's ``help``)."""
    from ..core.output import read_results
    from ..core.sort import apply_plan, plan_sort

    console, out = DataConsole(stderr=True), DataConsole(soft_wrap=True)
    if undo_log is not None:
        return _undo(undo_log, console)
    with exit_on_error(console):
        if results is None or into is None:
            raise UsageError("give the results file and --into DIR: wwts sort results.jsonl --into sorted")
        mode = _mode(link, copy, move)
        res = read_results(results)
        if res.task != "classify":
            raise UsageError(f"{results} holds captions, not labels: sort takes the results of wwts classify")
        plan = plan_sort(res, into, mode)
    for path, why in plan.skipped:
        out.print(styled(("skip ", "yellow"), f" {path}: {why}"))
    for path, target in plan.present:
        out.print(styled(("keep ", "dim"), f" {path} (already at {target})"))
    for a in plan.actions:
        out.print(styled((f"{a.op:5}", "cyan"), f" {a.source} → {a.target}"))
    if not yes:
        console.print(f"dry run: nothing was changed; {len(plan.actions)} changes into {len(plan.folders)} label "
                      "folders would be made: run again with --yes to make them", soft_wrap=True)
        return
    try:
        with exit_on_error(console):
            done = apply_plan(plan)
    except KeyboardInterrupt:
        console.print(styled(("interrupted:", "yellow"), " to undo what was done: wwts sort --undo "
                             f"{_last_log(plan.into)}"), soft_wrap=True)
        raise typer.Exit(EXIT_SIGINT)
    for what, why in done.failed:
        console.print(styled(("failed:", "red"), f" {what}: {why}"), soft_wrap=True)
    console.print(f"sorted: {done.done} changes, {len(done.failed)} failed; to undo: wwts sort --undo {done.log}",
                  soft_wrap=True)
    if done.failed:
        raise typer.Exit(EXIT_IMAGES_FAILED)


def _last_log(into: Path) -> Path | str:
    """The newest undo log in ``into`` (the one an interrupted ``apply_plan`` was writing)."""
    logs = sorted(into.glob(".wwts-sort-*.jsonl"))
    return logs[-1] if logs else f"{into}/.wwts-sort-*.jsonl"
