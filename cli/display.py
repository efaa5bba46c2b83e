"""Showing user data on a terminal: literal text, escaped control characters, tables that fit.

Paths, labels, captions and error messages are data. Nothing here reads them as rich markup, and
control characters in them (a file named ``"\\x1b[2Jclear.jpg"``) are shown escaped (``\\x1b``)
so they cannot move the cursor or clear the screen. Files written with ``--out`` keep the real
text: only what is shown on the terminal is escaped.
"""

from __future__ import annotations

import os
import re
import unicodedata
from typing import Iterable, Sequence

from rich.cells import cell_len, chop_cells
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

#: Format characters that reorder or hide text (bidirectional overrides and isolates).
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def shown(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters written as escapes (``\\x1b``, ``\\n``, ``\\u202e``).

    Escapes C0/C1 control characters (Unicode category Cc: ESC, BEL, CR, DEL...) and the
    bidirectional formatting characters; every other character, CJK included, is kept.

    Args:
        text: any text (a path, a label, an error message).
        keep_newlines: keep ``"\\n"`` as a line break (multi-line messages).
    """
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if (ch == "\n" and keep_newlines) or not (ch in _BIDI or unicodedata.category(ch) == "Cc"):
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def styled(*parts: str | tuple[str, str]) -> Text:
    """A ``Text`` from literal parts: ``styled(("error:", "bold red"), " ", message)``.

    Plain strings are data: shown literally (no markup), control characters escaped.
    """
    return Text.assemble(*((shown(p, keep_newlines=True), None) if isinstance(p, str)
                           else (shown(p[0], keep_newlines=True), p[1]) for p in parts))


class DataConsole(Console):
    """A rich ``Console`` on which every ``str`` printed is data, never markup.

    ``print("imgs/[draft] 咖啡.jpg")`` shows exactly that (a plain ``Console`` drops ``[draft]``,
    and raises ``MarkupError`` on ``[/x]``); control characters are escaped (``shown``). Use
    ``styled`` for colour. Prose wraps at word boundaries on a terminal and stays one line per
    message when the output is a pipe or a file (unless ``soft_wrap`` is given).
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("highlight", False)
        super().__init__(markup=False, **kwargs)

    def print(self, *objects, **kwargs) -> None:  # noqa: A003 - rich's name
        objects = tuple(Text(shown(o, keep_newlines=True)) if isinstance(o, str) else o for o in objects)
        kwargs.setdefault("soft_wrap", not self.is_terminal)
        super().print(*objects, **kwargs)


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
