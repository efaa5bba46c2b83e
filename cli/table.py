"""The records as a table on the terminal: whole labels and scores, paths broken after a ``/``.

Everything in a cell is data: shown literally, control characters escaped (``console.shown``).
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Sequence

from rich.cells import cell_len, chop_cells
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from .console import DataConsole, shown


class BreakableCell:
    """A table cell of lines that break only after given characters (for paths: after ``/``),
    each piece kept whole unless it alone is wider than the column (then it folds).

    ``BreakableCell(["人 0.912", "车 0.051"])`` never cuts an entry between label and score;
    ``BreakableCell([path], breaks="/ ")`` puts ``photos/2024/`` and ``[draft] 咖啡.jpg`` on
    separate lines in a narrow column instead of breaking ``咖啡`` in two.
    """

    def __init__(self, lines: Iterable[str], *, breaks: str = "", first_style: str = "") -> None:
        self.lines = [shown(line) for line in lines]
        self.first_style = first_style
        if breaks:
            pattern = re.compile(f"[^{re.escape(breaks)}]*[{re.escape(breaks)}]+|[^{re.escape(breaks)}]+")
            self.pieces = [pattern.findall(line) or [""] for line in self.lines]
        else:
            self.pieces = [[line] for line in self.lines]

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        widest = max((cell_len(p.rstrip()) for ps in self.pieces for p in ps), default=0)
        longest = max((cell_len(line) for line in self.lines), default=0)
        return Measurement(min(widest, options.max_width), min(longest, options.max_width))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max(1, options.max_width)
        out: list[str] = []
        for pieces in self.pieces:
            line = ""
            for piece in pieces:
                if line and cell_len((line + piece).rstrip()) > width:
                    out.append(line.rstrip())
                    line = ""
                line += piece
                while cell_len(line.rstrip()) > width:  # one piece wider than the column: fold it
                    head, *_ = chop_cells(line, width)
                    out.append(head)
                    line = line[len(head):]
            out.append(line.rstrip())
        text = Text("\n".join(out), no_wrap=True, overflow="ignore")
        if self.first_style and out:
            text.stylize(self.first_style, 0, len(out[0]))
        yield text


#: Where a path may break across lines: after a separator, or a space in a name.
_PATH_BREAKS = "/ " + ("\\" if os.sep == "\\" else "")


def _size(record) -> str:
    return f"{record.width}x{record.height}" if record.width else ""


def records_table(records: Sequence, task: str, *, one_line: bool = False) -> Table:
    """The records as a rich ``Table`` that fits the console width it is printed on.

    Columns: ``path``, then ``top-k`` (classify: one ``label score`` entry per line, best first,
    never cut between label and score) or ``caption``, ``size``, and ``error`` only when some
    record has an error. When the table is wider than the console, the path and the prose
    columns (caption, error) give way first: a path breaks after a ``/`` and folds only a name
    that alone is wider than its column; captions and errors wrap at word boundaries.
    ``one_line``: the top-k entries on one line, comma-separated (for a pipe or a file, where
    the table is printed at its natural width: one line per image).
    """
    table = Table(show_lines=False)
    with_errors = any(r.error for r in records)
    table.add_column("path")
    if task == "classify":
        table.add_column("top-k", no_wrap=True)  # never shrunk before the path
    else:
        table.add_column("caption", overflow="fold")
    table.add_column("size", justify="right", no_wrap=True)
    if with_errors:
        table.add_column("error", style="red", overflow="fold")
    for r in records:
        row: list = [BreakableCell([r.path], breaks=_PATH_BREAKS)]
        if task == "classify":
            entries = [f"{ls.label} {ls.score:.3f}" for ls in r.top_k]
            row.append(BreakableCell([", ".join(entries)] if one_line else entries, first_style="bold"))
        else:
            row.append(Text(shown(r.caption or "")))
        row.append(_size(r))
        if with_errors:
            row.append(Text(shown(r.error or "")))
        table.add_row(*row)
    return table


def print_records(records: Sequence, task: str) -> None:
    """Print the records as a table on stdout (``records_table``).

    On a terminal the table fits the window. When stdout is a pipe or a file, rich would assume
    80 columns and break paths, so the table is rendered at its natural width instead: one line
    per image, paths intact for grep.
    """
    console = DataConsole()
    table = records_table(records, task, one_line=not console.is_terminal)
    if not console.is_terminal:
        natural = console.measure(table, options=console.options.update_width(1_000_000)).maximum
        console.width = max(console.width, natural)
    console.print(table)
