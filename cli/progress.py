"""Progress of a run on the terminal: the start line and "loading model" while the model loads,
then a rich bar with images done / total, images/s, errors and ETA.

When the console is not a terminal (a pipe, a log file, CI) the spinner and the bar become plain
lines (the bar's every ``interval`` seconds); with ``quiet`` nothing is shown. Knows nothing about
models beyond the plan's names.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Column
from rich.text import Text

from .console import styled

#: Bar width limits in cells: the bar shrinks to fit, and other columns go before it gets narrower.
BAR_MAX, BAR_MIN = 40, 10


class FigureColumn(ProgressColumn):
    """A column that shows one figure of the task, as ``figure(task)`` draws it (``show_speed``,
    ``show_errors``, ``show_eta`` below)."""

    def __init__(self, figure: Callable[[Task], Text], **kwargs) -> None:
        super().__init__(**kwargs)
        self.figure = figure

    def render(self, task: Task) -> Text:
        return self.figure(task)


def show_speed(task: Task) -> Text:
    """Throughput in images/s (rich's ``task.speed``: a moving average of progress)."""
    value = task.finished_speed or task.speed
    return Text("-- images/s" if value is None else f"{value:.1f} images/s", style="progress.data.speed")


def show_errors(task: Task) -> Text:
    """Images that failed so far (the ``errors`` field of the task), red when non-zero."""
    count = task.fields.get("errors", 0)
    return Text(f"{count} errors", style="red" if count else "dim")


_REMAINING = TimeRemainingColumn()


def show_eta(task: Task) -> Text:
    """``ETA 0:01:02``: rich's time remaining, labelled."""
    return Text.assemble("ETA ", _REMAINING.render(task))


def progress_columns(width: int, total: int, description: str) -> list[ProgressColumn]:
    """The progress bar's columns for a console ``width`` cells wide, on one line.

    Columns are kept in order of use (bar, images done / total, errors, images/s, ETA, task
    name, time elapsed) while they fit with a bar of at least ``BAR_MIN`` cells; the bar takes
    what is left, up to ``BAR_MAX``. Widths assume at most ``total`` images and 9999.9 images/s.
    """
    digits = len(str(total))
    no_wrap = {"table_column": Column(no_wrap=True)}
    candidates = [  # (priority, width, column), in display order
        (5, len(description), TextColumn("[bold]{task.description}", **no_wrap)),
        (1, 2 * digits + 1, MofNCompleteColumn(**no_wrap)),
        (3, len("9999.9 images/s"), FigureColumn(show_speed, **no_wrap)),
        (2, digits + len(" errors"), FigureColumn(show_errors, **no_wrap)),
        (6, len("0:00:00"), TimeElapsedColumn(**no_wrap)),
        (4, len("ETA 0:00:00"), FigureColumn(show_eta, **no_wrap)),
    ]
    kept = {}
    used = BAR_MIN
    for priority, cells, column in sorted(candidates, key=lambda c: c[0]):
        if used + 1 + cells > width:
            break
        used += 1 + cells
        kept[priority] = column
    bar = BarColumn(bar_width=max(1, min(BAR_MAX, BAR_MIN + width - used)))
    shown = [column for priority, _, column in candidates if priority in kept]
    return shown[:1] + [bar] + shown[1:] if 5 in kept else [bar] + shown


class RunProgress:
    """Shows the progress of one run; call ``advance(n, errors)`` after each batch.

    Args:
        console: where to draw (stderr in the CLI).
        total: number of images.
        description: text before the bar (e.g. ``"classify"``).
        quiet: show nothing.
        interval: seconds between plain lines when the console is not a terminal.
        clock: time source in seconds (tests pass a fake one).
    """

    def __init__(self, console: Console, total: int, description: str, *, quiet: bool = False,
                 interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.total = total
        self.description = description
        self.quiet = quiet
        self.interval = interval
        self.clock = clock
        self.done = 0
        self.errors = 0
        self._progress: Progress | None = None
        self._task_id = None
        self._t0 = 0.0
        self._last_line = 0.0

    @property
    def live(self) -> bool:
        """True when a live bar is drawn (a terminal and not quiet)."""
        return not self.quiet and self.console.is_terminal

    def __enter__(self) -> "RunProgress":
        self._t0 = self._last_line = self.clock()
        if self.live:
            columns = progress_columns(self.console.width, self.total, self.description)
            self._progress = Progress(*columns, console=self.console, get_time=self.clock,
                                      transient=False)
            self._progress.start()
            self._task_id = self._progress.add_task(self.description, total=self.total, errors=0)
        return self

    def advance(self, n: int, errors: int = 0) -> None:
        """Record ``n`` more images done, ``errors`` of which failed."""
        self.done += n
        self.errors += errors
        if self._progress is not None:
            self._progress.update(self._task_id, advance=n, errors=self.errors)
        elif not self.quiet:
            now = self.clock()
            if now - self._last_line >= self.interval and self.done < self.total:
                self._last_line = now
                self.console.print(self.plain_line(now), highlight=False, soft_wrap=True)

    def plain_line(self, now: float | None = None) -> str:
        """``"12/100 images · 3.4 images/s · 0 errors"`` for non-terminal output."""
        elapsed = (now if now is not None else self.clock()) - self._t0
        speed = self.done / elapsed if elapsed > 0 else 0.0
        return (f"{self.description}: {self.done}/{self.total} images · {speed:.1f} images/s · "
                f"{self.errors} errors")

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()


def start_line(plan: dict) -> str:
    """``wwts classify: 20 images · model M · device cpu · dtype float32 · threads 2 · batch size 8``
    from the plan ``engine.start`` passes to its ``loading`` callback (or ``Run.info()``); with
    ``--quantize int8`` the dtype reads ``float32 + int8 Linear layers``."""
    int8 = plan.get("quantize") == "int8"
    dtype = plan["dtype"] + (f" + {plan['quantize']} Linear layers" if int8 else "")
    if plan.get("backend") not in (None, "torch"):  # OpenVINO / ONNX Runtime: their own device names
        dtype = f"{plan['dtype']}{' + int8' if int8 else ''} · backend {plan['backend']}"
    line = (f"wwts {plan['task']}: {plan['images']} images · model {plan['model']} · device {plan['device']} · "
            f"dtype {dtype} · threads {plan['threads']} · batch size {plan['batch_size']}")
    # the size rule's pick and reason (``backends.size_rule``): why this run converts, or does not
    return line + (f" · {plan['route']}" if plan.get("route") else "")


def cpu_note(plan: dict) -> str | None:
    """On the CPU: a line on how to get a faster device (``None`` on other devices). No speed
    figure: the progress bar and the summary show the speed measured on this machine."""
    if not str(plan["device"]).lower().startswith("cpu"):  # torch says cpu, OpenVINO CPU
        return None
    int8 = "" if plan.get("quantize") or plan.get("route") else (
        " --quantize int8 may be faster on this CPU: `make bench` measures it and its agreement with float32.")
    return ("CPU mode: slower than a GPU." + int8 + " With an NVIDIA GPU install a CUDA build of torch "
            "(https://pytorch.org/get-started/locally/); on an Apple-silicon Mac use --device mps.")


@contextmanager
def loading(console: Console, quiet: bool, plan: dict) -> Iterator[None]:
    """Held while the model loads: the start line, the CPU note, then "loading model NAME …"
    (a spinner on a terminal, one plain line otherwise). Nothing with ``quiet``."""
    if quiet:
        yield
        return
    console.print(start_line(plan))
    note = cpu_note(plan)
    if note:
        console.print(styled((note, "dim")))
    message = f"loading model {plan['model']} …"
    if not console.is_terminal:
        console.print(message)
        yield
        return
    with console.status(styled(message), spinner="dots"):
        yield
