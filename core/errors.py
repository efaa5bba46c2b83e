"""Exceptions raised by wwts. The CLI maps each to one red line on stderr and an exit code."""

from __future__ import annotations


def describe(exc: BaseException, *, whole: bool = False) -> str:
    """How a caught library exception is quoted inside a wwts message or record, on one line:
    ``"TypeName: first line of the message"``, or with ``whole`` every line of the message joined
    by single spaces (some decoders and libraries spread one message over several lines, and a
    record or an "unexpected error" line must not drop the detail); ``"TypeName"`` when the
    message is empty."""
    text = " ".join(str(exc).split()) if whole else (str(exc).strip().splitlines() or [""])[0].strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class WwtsError(Exception):
    """Base class for errors that end a run with a clear message instead of a traceback.

    Attributes:
        exit_code: process exit status the CLI uses for this error (1 unless a subclass says).
    """

    exit_code = 1


class UsageError(WwtsError):
    """The command line, the configuration or a file it names cannot be used, found before any
    image is processed: bad labels, a missing input path, an ``--out`` whose folder cannot be
    written, that another run holds, or that is corrupt on ``--resume``, a results file that is
    not a wwts output..."""

    exit_code = 2


class ModelLoadError(WwtsError):
    """A model or its processor could not be loaded (not cached and hub unreachable, bad folder...)."""

    exit_code = 2


class DeviceError(WwtsError):
    """An explicitly requested device (``cuda``, ``cuda:N``, ``mps``...) cannot be used."""

    exit_code = 2


class DeviceFault(WwtsError):
    """The device failed in a way that poisons the process (CUDA device-side assert...).

    Results produced before the fault have been yielded; the run cannot go on in this process.
    """

    exit_code = 4


class ImageError(WwtsError):
    """One image could not be read. Never ends a run: it becomes that image's ``error`` field.

    Attributes:
        category: short machine-readable kind of failure, e.g. ``"not_found"``, ``"unidentified"``,
            ``"truncated"``, ``"too_large"``, ``"decode"``.
    """

    exit_code = 3

    def __init__(self, category: str, message: str) -> None:
        super().__init__(message)
        self.category = category

    def __str__(self) -> str:
        message = " ".join(str(self.args[0]).split())  # one line, whatever the library said
        return f"{self.category}: {message}"

    def __reduce__(self) -> tuple:
        """Pickle with both arguments (a decode worker process sends one back)."""
        return type(self), (self.category, self.args[0])


class NotReproducible(ValueError):
    """A model's preprocessing (its image processor's settings, or its tokenizer) that wwts' own
    NumPy / ``tokenizers`` path (``core.input.ImagePreprocessor``, ``core.models.TextTokenizer``)
    does not reproduce exactly; the message names the setting. The caller falls back to
    transformers' processor (and a run that would have started without torch loads the model)."""
