"""The batch loop: decode (thread pool) → mini-batches → ``process_batch`` → records, in input order.

A ``Run`` (made by ``plan.start``) yields one record per image; it never prints and never writes
files: the CLI consumes the iterator (progress bar, writers), like simonw/llm's CLI wraps its
embeddings generator. Images are decoded, and prepared by the task (``Task.prepare``), on the
decode pool's threads in a bounded window while the model works on the previous batch.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .. import hardware as devices
from .. import models
from ..arrays import dtype_name
from ..config import RunConfig
from ..errors import ImageError
from ..input import DecodePool, Sample
from ..output import ImageRecord
from ..tasks import Task
from .batch import process_batch
from .recovery import Recovery
from .stored import flush_store, store_lookup, store_path

if TYPE_CHECKING:
    import torch


def now() -> str:
    """The local time as ISO 8601 with the UTC offset, to the second (``started`` / ``finished``)."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def late_load_s(task: Any) -> float:
    """Seconds the task's image tower spent loading on first use (``tasks.LazyTorchImageEncoder``:
    a run served from the embedding store loads the model only for a new photo); 0 otherwise."""
    return float(getattr(task.image_encoder, "load_s", 0.0) or 0.0) if hasattr(task, "image_encoder") else 0.0


@dataclass
class RunStats:
    """What happened during a run; the CLI prints it and writers store it in the ``run`` section.

    Times are seconds; ``images_per_s`` counts every record (errors included) over the time spent
    iterating (model load excluded, reported separately as ``load_s``).
    """

    images: int = 0
    errors: int = 0
    load_s: float = 0.0
    seconds: float = 0.0
    batch_size: int = 0
    device: str = ""
    events: list[str] = field(default_factory=list)
    #: Images whose embedding was read from the embedding store (not decoded, no image tower).
    cached: int = 0
    #: Seconds to the first batch's records (one-off set-up: oneDNN primitives, OpenVINO's first
    #: inference, cuDNN autotuning, filling the decode window) and how many images it held.
    first_batch_s: float = 0.0
    first_batch_images: int = 0

    @property
    def steady_images_per_s(self) -> float:
        """Records per second after the first batch (0 until a second batch is done)."""
        rest = self.seconds - self.first_batch_s
        return (self.images - self.first_batch_images) / rest if rest > 0 and self.images > self.first_batch_images \
            else 0.0

    @property
    def images_per_s(self) -> float:
        """Records per second of iteration (0 before any)."""
        return self.images / self.seconds if self.seconds > 0 else 0.0


class BatchRun:
    """What the CLI iterates, whoever computes the records: ``paths``, ``total``, ``stop`` and
    iteration over ``batches()`` (``Run`` here; ``core.cluster.ClusterRun`` on a Ray cluster)."""

    paths: list[Path]
    _stop: bool = False

    @property
    def total(self) -> int:
        """Number of images the run will produce records for."""
        return len(self.paths)

    def stop(self) -> None:
        """Ask the run to stop after the batch in flight (used on Ctrl-C / SIGTERM)."""
        self._stop = True

    def __iter__(self) -> Iterator[ImageRecord]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[ImageRecord]]:
        """Lists of records, one per mini-batch."""
        raise NotImplementedError


class Run(BatchRun):
    """One prepared run. Iterate it (or ``batches()``) to get records in input order.

    Attributes:
        config: the ``RunConfig``.
        paths: every image path found, in processing order.
        task: the loaded task adapter.
        device_choice: how the device was picked (``core.hardware.DeviceChoice``).
        threads: torch intra-op threads.
        workers: image decode threads.
        batch_size: current mini-batch size (shrinks after an out-of-memory error).
        stats: ``RunStats``, updated while iterating.
    """

    def __init__(self, config: RunConfig, paths: list[Path], task: Task,
                 device_choice: devices.DeviceChoice, threads: int, workers: int,
                 batch_size: int, load_s: float, started: str) -> None:
        self.config = config
        self.paths = paths
        self.task = task
        self.device_choice = device_choice
        self.threads = threads
        self.workers = workers
        self.batch_size = batch_size
        self.started = started
        self.stats = RunStats(load_s=load_s, batch_size=batch_size, device=str(task.device))
        self._stop = False

    @property
    def device(self) -> torch.device:
        """Where the task runs now (the CPU after a fallback)."""
        return self.task.device

    @property
    def dtype(self) -> torch.dtype:
        """The task's compute dtype now."""
        return self.task.dtype

    def info(self) -> dict[str, Any]:
        """The ``run`` section: model, device, dtype, threads, batch size, task settings, times."""
        from .. import __version__

        info: dict[str, Any] = {
            "wwts": __version__,
            "task": self.config.task,
            "model": models.model_for(self.config.task, self.config.lang, self.config.model),
            "device": self.stats.device,  # e.g. "cuda:0→cpu" after a fallback
            "dtype": dtype_name(self.task.dtype),
            "quantize": self.config.quantize,
            "threads": self.threads,
            "decode_workers": self.workers,
            "batch_size": self.stats.batch_size or self.batch_size,
            "images": self.total,
            "started": self.started,
            "load_s": round(self.stats.load_s, 3),
        }
        info.update(self.task.run_info())
        if hasattr(self.task, "store_opener"):
            info["store"] = store_path(self.task)  # None: --no-store, or the store could not be used
        encoder = getattr(self.task, "image_encoder", None)
        info["backend"] = getattr(encoder, "backend", "torch")
        if getattr(encoder, "precision", None):  # what OpenVINO / ONNX Runtime compute in
            info["dtype"] = encoder.precision
        if getattr(self.task, "backend", None) is not None:
            info["backend_reason"] = self.task.backend.reason
        if self.stats.seconds:
            info.update(seconds=round(self.stats.seconds, 3), images_per_s=round(self.stats.images_per_s, 3),
                        first_batch_s=round(self.stats.first_batch_s, 3),
                        steady_images_per_s=round(self.stats.steady_images_per_s, 3),
                        errors=self.stats.errors, cached=self.stats.cached, finished=now())
        if self.stats.events:
            info["events"] = list(self.stats.events)
        return info

    def batches(self) -> Iterator[list[ImageRecord]]:
        """Yield lists of records (one list per mini-batch), in input order.

        Raises:
            DeviceFault: the accelerator failed in a way that poisons the process; every record
                finished before the fault has been yielded.
        """
        t0 = time.perf_counter()
        task = self.task
        recovery = Recovery(task, self.batch_size, auto=self.device_choice.auto, events=self.stats.events)
        pool = DecodePool(self.workers, draft_size=task.input_size, max_pixels=self.config.max_pixels,
                          lookup=store_lookup(task, self.config),
                          allow_truncated=self.config.allow_truncated, transform=task.prepare)
        pending: deque[tuple[Path, Future]] = deque()
        path_iter = iter(self.paths)
        loaded = late_load_s(task)
        try:
            self._submit_more(pool, pending, path_iter)
            while pending and not self._stop:
                chunk = self._next_chunk(pool, pending, path_iter)
                try:
                    records = process_batch(task, chunk, recovery=recovery)
                finally:
                    self._sync(recovery)
                late = late_load_s(task) - loaded
                if late > 0:  # the model loaded in this batch: load time, not iteration
                    t0, loaded = t0 + late, loaded + late
                    self.stats.load_s += late
                self.stats.images += len(records)
                self.stats.errors += sum(1 for r in records if r.error)
                self.stats.cached += sum(1 for r in records if getattr(r, "cached", None))
                self.stats.seconds = time.perf_counter() - t0
                if not self.stats.first_batch_images:
                    self.stats.first_batch_s, self.stats.first_batch_images = self.stats.seconds, len(records)
                yield records
        finally:
            for _, fut in pending:
                fut.cancel()
            pool.shutdown()
            flush_store(task)
            self.stats.seconds = time.perf_counter() - t0
            self.stats.batch_size = self.batch_size

    def _submit_more(self, pool: DecodePool, pending: deque, path_iter: Iterator[Path]) -> None:
        """Keep a bounded window: enough decoded images for the next two batches, no more."""
        while len(pending) < 2 * self.batch_size + self.workers and not self._stop:
            path = next(path_iter, None)
            if path is None:
                return
            pending.append((path, pool.submit(path)))

    def _next_chunk(self, pool: DecodePool, pending: deque,
                    path_iter: Iterator[Path]) -> list[tuple[Path, Sample | ImageError]]:
        """The next ``batch_size`` decode results, in input order, refilling the window as they come."""
        chunk: list[tuple[Path, Sample | ImageError]] = []
        while pending and len(chunk) < self.batch_size:
            path, fut = pending.popleft()
            try:
                chunk.append((path, fut.result()))
            except ImageError as exc:
                chunk.append((path, exc))
            self._submit_more(pool, pending, path_iter)
        return chunk

    def _sync(self, recovery: Recovery) -> None:
        """Take over what the fault policy changed: batch size, and the device after a fallback."""
        self.batch_size = recovery.batch_size
        self.stats.batch_size = recovery.batch_size
        if recovery.device_label:
            self.stats.device = recovery.device_label
