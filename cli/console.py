"""Showing user data on a terminal: literal text, escaped control characters, warnings as lines.

Paths, labels, captions and error messages are data. Nothing here reads them as rich markup, and
control characters in them (a file named ``"\\x1b[2Jclear.jpg"``) are shown escaped (``\\x1b``)
so they cannot move the cursor or clear the screen. Files written with ``--out`` keep the real
text: only what is shown on the terminal is escaped.
"""

from __future__ import annotations

import logging
import unicodedata

from rich.console import Console
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


class ConsoleLogHandler(logging.Handler):
    """Engine warnings (OOM back-off, device fallback...) as yellow ``warning:`` lines on ``console``."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(styled(("warning:", "yellow"), " ", record.getMessage()))


def log_to(console: Console) -> None:
    """Send the ``wwts`` loggers' warnings to ``console`` (only there: no propagation to the root)."""
    logger = logging.getLogger("wwts")
    logger.handlers[:] = [ConsoleLogHandler(console)]
    logger.propagate = False
