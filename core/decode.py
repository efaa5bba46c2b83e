"""The decode pool: images are decoded in parallel with the model's work, in a bounded window.

JPEG, PNG and the other Pillow formats decode in threads (Pillow releases the GIL while it
decodes). Formats whose native decoders have been seen to crash the whole process — HEIF/HEIC
and AVIF through libheif / libavif — decode in worker processes instead (as many as there are
decode threads, started on first use), so a crash costs one error record, not the run: when a
worker dies, the process pool is rebuilt and every file that was in it is retried alone in a
process of its own, so only the file that kills the decoder gets the error ``crashed: ...``.

This module must not import torch.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from typing import Any, Callable

from wwts.core.errors import ImageError
from wwts.core.images import DecodedImage, load_image

log = logging.getLogger(__name__)

#: Extensions decoded in the isolated worker process (native decoders with a crash history).
ISOLATED_EXTENSIONS = frozenset({".heic", ".heif", ".avif", ".hif"})


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
    """Decode paths into ``DecodedImage`` objects on worker threads (HEIF/AVIF in worker processes).

    Args:
        workers: decode threads (see ``core.device.decode_workers``); also the most worker
            processes for HEIF/AVIF (spawned when the first such file comes).
        draft_size: model input side in pixels, for draft decoding (``None``: full size).
        max_pixels: refuse images with more pixels (``None``: Pillow's default limit).
        allow_truncated: decode truncated files as far as they go instead of failing.
        isolated_load: the function run in the worker process (tests replace it with one that
            crashes); must be importable by name.
        prepare: optional ``DecodedImage -> model inputs`` run on the decode thread right after
            decoding (the task's per-image preprocessing); its result is stored in ``.inputs``.
            An exception there becomes ``ImageError("preprocess", ...)``.

    ``submit(path)`` returns a ``Future`` whose result is a ``DecodedImage`` or raises
    ``ImageError``; it never raises anything else. ``shutdown()`` cancels what has not started
    and waits for the threads; it is safe to call twice.
    """

    def __init__(self, workers: int, *, draft_size: int | None = None, max_pixels: int | None = None,
                 allow_truncated: bool = False, isolated_load: Callable[..., DecodedImage] = load_image,
                 prepare: Callable[[DecodedImage], Any] | None = None) -> None:
        self._prepare = prepare
        self._load = partial(load_image, draft_size=draft_size, max_pixels=max_pixels,
                             allow_truncated=allow_truncated)
        self._isolated = partial(isolated_load, draft_size=draft_size, max_pixels=max_pixels,
                                 allow_truncated=allow_truncated)
        self._workers = max(1, int(workers))
        self._threads = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="wwts-decode")
        self._proc: ProcessPoolExecutor | None = None
        self._proc_lock = threading.Lock()
        self._alone = threading.Lock()  # held while a file is retried alone after a crash
        self._closed = False

    def submit(self, path: Path) -> Future:
        """Start decoding ``path``; returns a ``Future[DecodedImage]``."""
        if Path(path).suffix.lower() in ISOLATED_EXTENSIONS:
            return self._threads.submit(self._prepared, self._decode_isolated, path)
        return self._threads.submit(self._prepared, self._load, path)  # load_image raises only ImageError

    def _prepared(self, decode: Callable[[Path], DecodedImage], path: Path) -> DecodedImage:
        decoded = decode(path)
        if self._prepare is not None:
            try:
                decoded.inputs = self._prepare(decoded)
            except Exception as exc:
                raise ImageError("preprocess", f"{type(exc).__name__}: {exc}") from None
            decoded.image = None  # only the model inputs wait in the window, not the pixels
        return decoded

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
            return pool.submit(self._isolated, path).result()
        except BrokenProcessPool:
            self._reset_process_pool(pool)
        except ImageError:
            raise
        except Exception as exc:
            raise ImageError("decode", f"{type(exc).__name__}: {exc}") from None
        # A worker died with this file (or another one) inside: retry it alone, in a process that
        # no other file shares, so a second crash can only be this file's.
        with self._alone:
            if self._closed:
                raise ImageError("decode", "stopped before this file was decoded")
            alone = self._new_process_pool(1)
            try:
                return alone.submit(self._isolated, path).result()
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
        self._threads.shutdown(wait=True, cancel_futures=True)
        with self._proc_lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            proc.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
