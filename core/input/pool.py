"""The decode pool: images are decoded in parallel with the model's work, in a bounded window.

JPEG, PNG and the other Pillow formats decode in threads (Pillow releases the GIL while it
decodes). Formats decoded by native libraries that misbehave on broken files decode in worker
processes instead (as many as there are decode threads, started on first use): HEIF/HEIC and
AVIF, whose libheif / libavif have been seen to crash the whole process, and TIFF, whose libtiff
writes its complaints (``Fax3Decode2D: Bad code word``...) straight to file descriptor 2. A file
goes to a worker by its extension or, whatever its name, by its first bytes (TIFF or ISO-BMFF
``ftyp`` magic). In the worker, file descriptor 2 is redirected to a temporary file around each
decode and what the decoder wrote there becomes part of that image's ``note`` (or of its error),
so nothing reaches the terminal untied to a file. A crash costs one error record, not the run:
when a worker dies, the process pool is rebuilt and every file that was in it is retried alone
in a process of its own, so only the file that kills the decoder gets the error ``crashed: ...``.

This module must not import torch.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

from ..errors import ImageError
from .decode import DecodedImage, load_image, read_head

log = logging.getLogger(__name__)

#: Version of wwts' decode recipe (``decode.load_image`` + ``pixels``: draft scaling, EXIF
#: orientation, RGB conversion, box reduction) that embedding-store keys include: bump it whenever
#: a change there can change the pixels handed to a model, so no stored embedding made from the
#: old pixels is served.
DECODE_RECIPE = 1
#: The ``draft_keep`` (``decode.load_image``) of the decode recipe ``DECODE_RECIPE`` names, and of
#: the fast one a run uses by default (``ImagePreprocessor(fast=True)``; store keys say which).
EXACT_DRAFT_KEEP, FAST_DRAFT_KEEP = 2, 1
#: Extensions decoded in the isolated worker processes: native decoders with a crash history
#: (libheif, libavif) or that write to stderr themselves (libtiff).
ISOLATED_EXTENSIONS = frozenset({".heic", ".heif", ".avif", ".hif", ".tif", ".tiff"})
#: First bytes of TIFF files (little/big endian, classic and BigTIFF): isolated whatever the name.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: Most bytes of a decoder's stderr text read back per image, and most distinct lines kept.
_CAPTURE_BYTES = 64 * 1024
_CAPTURE_LINES = 3
_capture_file: Any = None  # the worker process's temporary file for file descriptor 2
#: Extensions a thread waiting in ``DecodePool.result`` decodes itself (see there).
_HELPER_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif"})


def needs_isolation(path: Path) -> bool:
    """True when ``path`` should decode in a worker process: an extension in
    ``ISOLATED_EXTENSIONS``, or content starting like a TIFF or an ISO-BMFF (HEIF/AVIF) file."""
    if Path(path).suffix.lower() in ISOLATED_EXTENSIONS:
        return True
    head = read_head(path, 12)
    return head[:4] in _TIFF_MAGIC or head[4:8] == b"ftyp"


@dataclass(frozen=True)
class Sample:
    """What a decode pool's future gives: one decoded image and its model inputs.

    Attributes:
        decoded: the ``DecodedImage`` (size, frames, note). When the pool has a ``transform``,
            its ``image`` is ``None``: only ``inputs`` waits in the window, not the pixels.
        inputs: ``transform(decoded image)`` (e.g. the task's ``prepare``: ``pixel_values
            (1, 3, H, W)`` for classify, the image itself for caption); ``None`` without a transform.
            For an image found in the embedding store, what the pool's ``lookup`` gave instead.
        key: the content key the pool's ``lookup`` gave (BLAKE3 of the file's bytes), else ``None``.
        cached: True when ``lookup`` found the image's result in the store: nothing was decoded.
    """

    decoded: DecodedImage
    inputs: Any = None
    key: Any = None
    cached: bool = False


@contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Redirect file descriptor 2 (what native libraries write to) to a temporary file for the
    block; afterwards the yielded list holds the text written there (decoded as UTF-8, errors
    replaced, at most ``_CAPTURE_BYTES``). For worker processes only, which decode one file at
    a time: in a threaded process, other threads' output would be captured too."""
    global _capture_file
    out: list[str] = []
    try:
        if _capture_file is None:
            _capture_file = tempfile.TemporaryFile()
        _capture_file.seek(0)
        _capture_file.truncate()
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (pythonw), or no temporary folder: decode uncaptured
        out.append("")
        yield out
        return
    if sys.stderr is not None:
        sys.stderr.flush()
    os.dup2(_capture_file.fileno(), 2)
    try:
        yield out
    finally:
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        _capture_file.seek(0)
        out.append(_capture_file.read(_CAPTURE_BYTES).decode("utf-8", "replace"))


def _summarise(text: str) -> str:
    """One line from a decoder's stderr text: its first distinct lines, and how many more
    (control characters become ``?``: the text came from a file's bytes)."""
    printable = "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text)
    lines = list(dict.fromkeys(" ".join(line.split()) for line in printable.splitlines()))
    lines = [line for line in lines if line]
    if not lines:
        return ""
    more = f" (+{len(lines) - _CAPTURE_LINES} more)" if len(lines) > _CAPTURE_LINES else ""
    return "decoder said: " + "; ".join(lines[:_CAPTURE_LINES]) + more


def isolated_decode(load: Callable[..., DecodedImage], path: Path, **kwargs: Any) -> DecodedImage | ImageError:
    """Run in a worker process: ``load(path, **kwargs)`` with file descriptor 2 captured.

    Returns:
        The ``DecodedImage``, with what the decoder wrote to stderr appended to its ``note``; or,
        when ``load`` raised ``ImageError``, that error (returned, not raised: it crosses the process
        boundary as a value) with the text appended to its message.
        Other exceptions propagate (the pool turns them into ``ImageError("decode", ...)``).
    """
    failure: ImageError | None = None
    with _stderr_captured() as captured:
        try:
            decoded = load(path, **kwargs)
        except ImageError as exc:
            failure = exc
    said = _summarise(captured[0])
    if failure is not None:
        return ImageError(failure.category, f"{failure.args[0]} ({said})") if said else failure
    if said:
        decoded.note = f"{decoded.note}; {said}" if decoded.note else said
    return decoded


def _worker_init() -> None:
    """Worker-process initializer. Ctrl-C is the parent's to handle (no traceback from the child),
    and the worker exits by itself when the parent is gone, however the parent died."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="wwts-parent-watch", daemon=True).start()


class DecodePool:
    """Decode paths on worker threads (HEIF/AVIF/TIFF in processes) into ``Sample`` objects.

    Args:
        workers: decode threads (see ``core.hardware.decode_workers``); also the most worker
            processes for HEIF/AVIF/TIFF (spawned when the first such file comes; see
            ``needs_isolation``).
        draft_size: model input side in pixels, for draft decoding (``None``: full size).
        draft_keep: the draft keeps the short side >= ``draft_keep * draft_size`` (``load_image``).
        max_pixels: refuse images with more pixels (``None``: Pillow's default limit).
        allow_truncated: decode truncated files as far as they go instead of failing.
        isolated_load: the function run in the worker process, through ``isolated_decode``
            (tests replace it with one that crashes); must be importable by name.
        transform: optional ``PIL.Image -> model inputs`` run on the decode thread right after
            decoding (the task's ``prepare``); its result is the ``Sample``'s ``inputs``. An
            exception there becomes ``ImageError("preprocess", ...)``.
        lookup: optional ``path -> (key, Sample or None)`` run on the decode thread before
            decoding (the engine's embedding-store lookup): a ``Sample`` is the result as it is
            (the file is not decoded); otherwise ``key`` (or ``None``) goes in the decoded
            ``Sample``. It must not raise.

    ``submit(path)`` returns a ``Future`` whose result is a ``Sample`` or raises ``ImageError``;
    it never raises anything else. ``result(future)`` waits for one, decoding queued paths in
    the waiting thread meanwhile. ``shutdown()`` cancels what has not started and waits for the
    threads; it is safe to call twice.
    """

    def __init__(self, workers: int, *, draft_size: int | None = None, max_pixels: int | None = None,
                 allow_truncated: bool = False, draft_keep: int = EXACT_DRAFT_KEEP, isolated_load: Callable[..., DecodedImage] = load_image,
                 transform: Callable[[Any], Any] | None = None,
                 lookup: Callable[[Path], tuple[Any, Sample | None]] | None = None) -> None:
        self._transform = transform
        self._lookup = lookup
        self._load = partial(load_image, draft_size=draft_size, max_pixels=max_pixels,
                             allow_truncated=allow_truncated, draft_keep=draft_keep)
        self._isolated = partial(isolated_decode, isolated_load, draft_size=draft_size,
                                 max_pixels=max_pixels, allow_truncated=allow_truncated, draft_keep=draft_keep)
        self._workers = max(1, int(workers))
        self._threads = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="wwts-decode")
        self._proc: ProcessPoolExecutor | None = None
        self._proc_lock = threading.Lock()
        self._alone = threading.Lock()  # held while a file is retried alone after a crash
        self._queue: deque[tuple[Path, Future]] = deque()  # submitted, not started
        self._queue_lock = threading.Lock()
        self._closed = False

    def submit(self, path: Path) -> Future:
        """Queue ``path`` for decoding; returns a ``Future[Sample]``. Queued paths are decoded in
        submission order by the pool's threads, and by a thread waiting in ``result``."""
        future: Future = Future()
        with self._queue_lock:
            self._queue.append((Path(path), future))
        self._threads.submit(self._run_one)
        return future

    def result(self, future: Future) -> Sample:
        """``future.result()``, decoding queued paths in the calling thread while it waits: the
        model's thread is idle then, and with a cheap model (or on a small CPU, where the pool
        gets few threads) it is a decoder more (the issue "the CPU per photo": 1 decode thread
        beside torch's 2 on a 2-core CPU capped a near-free model at half the decode speed).
        Only JPEGs (``_HELPER_SUFFIXES``): drafted, one decodes in tens of milliseconds, while a
        27 MP PNG is one C call of a second or more, during which the main thread runs no signal
        handler and two Ctrl-C would merge into one (tests/test_interruption.py).

        Raises:
            ImageError: as the future does.
        """
        while not future.done() and self._run_one(_HELPER_SUFFIXES):
            pass
        return future.result()

    def _run_one(self, suffixes: frozenset[str] | None = None) -> bool:
        """Decode the oldest queued path (with ``suffixes``: the oldest with one of these
        extensions) in this thread and settle its future; ``False`` when there is none."""
        with self._queue_lock:
            index = next((i for i, (path, _) in enumerate(self._queue)
                          if suffixes is None or path.suffix.lower() in suffixes), None)
            if index is None:
                return False
            path, future = self._queue[index]
            del self._queue[index]
        if not future.set_running_or_notify_cancel():
            return True
        try:
            future.set_result(self._sample(path))
        except Exception as exc:
            future.set_exception(exc)
        except BaseException as exc:  # Ctrl-C in the main thread while it decodes: the future fails, the run stops
            future.set_exception(exc)
            raise
        return True

    def _sample(self, path: Path) -> Sample:
        key = None
        if self._lookup is not None:
            key, found = self._lookup(path)
            if found is not None:
                return found
        # load_image raises only ImageError; the format sniff runs here, off the caller's thread
        decoded = self._decode_isolated(path) if needs_isolation(path) else self._load(path)
        if self._transform is None:
            return Sample(decoded, key=key)
        try:
            inputs = self._transform(decoded.image)
        except Exception as exc:
            raise ImageError("preprocess", f"{type(exc).__name__}: {exc}") from None
        return Sample(replace(decoded, image=None), inputs, key)

    @staticmethod
    def _new_process_pool(workers: int) -> ProcessPoolExecutor:
        # spawn, not fork: forking a process that runs torch's thread pools can deadlock.
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init)

    def _process_pool(self) -> ProcessPoolExecutor:
        with self._proc_lock:
            if self._proc is None:
                self._proc = self._new_process_pool(self._workers)
            return self._proc

    def _reset_process_pool(self, broken: ProcessPoolExecutor) -> None:
        with self._proc_lock:
            if self._proc is broken:
                self._proc = None
        broken.shutdown(wait=False, cancel_futures=True)

    def _decode_isolated(self, path: Path) -> DecodedImage:
        pool = self._process_pool()
        try:
            return _unwrap(pool.submit(self._isolated, path).result())
        except (BrokenProcessPool, CancelledError):
            # broken under this file, or shut down (its queued work cancelled) by the thread that
            # saw it break first: this file may be innocent, retry it alone
            self._reset_process_pool(pool)
        except ImageError:
            raise
        except RuntimeError as exc:
            if self._proc is pool and not self._closed:  # not "submitted to a pool already replaced"
                raise ImageError("decode", f"{type(exc).__name__}: {exc}") from None
        except Exception as exc:
            raise ImageError("decode", f"{type(exc).__name__}: {exc}") from None
        # A worker died with this file (or another one) inside: retry it alone, in a process that
        # no other file shares, so a second crash can only be this file's.
        with self._alone:
            if self._closed:
                raise ImageError("decode", "stopped before this file was decoded")
            alone = self._new_process_pool(1)
            try:
                return _unwrap(alone.submit(self._isolated, path).result())
            except BrokenProcessPool:
                log.warning("the image decoder crashed on %s", path)
                raise ImageError("crashed", "the image decoder crashed on this file (native code); "
                                            "the run went on without it") from None
            except ImageError:
                raise
            except Exception as exc:
                raise ImageError("decode", f"{type(exc).__name__}: {exc}") from None
            finally:
                alone.shutdown(wait=True, cancel_futures=True)

    def shutdown(self) -> None:
        """Cancel pending decodes, wait for running ones, stop the worker process."""
        self._closed = True
        with self._queue_lock:
            queued, self._queue = list(self._queue), deque()
        for _, future in queued:
            future.cancel()
        self._threads.shutdown(wait=True, cancel_futures=True)
        with self._proc_lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            proc.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _unwrap(result: DecodedImage | ImageError) -> DecodedImage:
    """The worker's result, or the ``ImageError`` it returned, raised."""
    if isinstance(result, ImageError):
        raise result
    return result
