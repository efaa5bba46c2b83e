"""The local distributor: decode (thread pool) → mini-batches → ``process_batch`` → records, in input order.

Images are decoded, and prepared by the task (``Task.prepare``), on the decode pool's threads in
a bounded window while the model works on the previous batch. ``local_runner`` makes the
``Runner`` of a run on this machine (``plan.start`` calls it once the task is loaded).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Iterator

from .. import hardware as devices
from ..backends import quantized
from ..config import RunConfig
from ..errors import ImageError
from ..input import DecodePool, Sample
from ..output import ImageRecord
from ..tasks import Task
from .batch import process_batch
from .recovery import Recovery
from .runner import Runner
from .store_lookup import flush_store, store_lookup, store_path


def late_load_s(task: Any) -> float:
    """Seconds the task's image tower spent loading on first use (``backends.LazyTower``:
    a run served from the embedding store loads the model only for a new photo); 0 otherwise."""
    return float(getattr(task.image_encoder, "load_s", 0.0) or 0.0) if hasattr(task, "image_encoder") else 0.0


def task_settings(task: Task) -> dict[str, Any]:
    """The ``run`` section's entries that come from the loaded task: its ``run_info()`` (labels,
    prompts, family...), ``store`` (its file; ``None``: ``--no-store`` or unusable), ``backend``,
    ``dtype`` (what OpenVINO / ONNX Runtime compute in, when they run the image tower) and
    ``backend_reason``."""
    info = dict(task.run_info())
    if hasattr(task, "store_opener"):
        info["store"] = store_path(task)
    encoder = getattr(task, "image_encoder", None)
    info["backend"] = getattr(encoder, "backend", None) or getattr(getattr(task, "backend", None), "name", "torch")
    if getattr(encoder, "precision", None):
        info["dtype"] = encoder.precision
    if task.config.quantize != "int8" and quantized(encoder):  # int8 that --backend auto chose
        info["quantize"] = quantized(encoder)
    if getattr(task, "backend", None) is not None:
        info["backend_reason"] = task.backend.reason
    return info


def local_runner(config: RunConfig, paths: list[Path], task: Task, device_choice: devices.DeviceChoice,
                 threads: int, workers: int, batch_size: int, load_s: float, started: str) -> Runner:
    """The ``Runner`` of a run on this machine: ``task`` loaded on ``device_choice.device``,
    ``workers`` decode threads, ``batch_size`` images per forward pass; ``load_s`` seconds of
    model load, ``started`` the ISO time the run began."""
    return Runner(config, paths, local_batches, settings=lambda: task_settings(task), batch_size=batch_size,
                  load_s=load_s, device=str(task.device), started=started, threads=threads, workers=workers,
                  task=task, device_choice=device_choice)


def local_batches(runner: Runner) -> Iterator[list[ImageRecord]]:
    """Yield lists of records (one list per mini-batch), in input order; the runner's batch size
    and ``stats`` (device after a fallback, events, late model load) follow the fault policy.

    Raises:
        DeviceFault: the accelerator failed in a way that poisons the process; every record
            finished before the fault has been yielded.
    """
    task, config, stats = runner.task, runner.config, runner.stats
    recovery = Recovery(task, runner.batch_size, auto=runner.device_choice.auto, events=stats.events)
    pool = DecodePool(runner.workers, draft_size=task.input_size, draft_keep=task.draft_keep,
                      max_pixels=config.max_pixels, lookup=store_lookup(task, config), allow_truncated=config.allow_truncated,
                      transform=task.prepare)
    pending: deque[tuple[Path, Future]] = deque()
    path_iter = iter(runner.paths)
    loaded = late_load_s(task)
    try:
        _submit_more(runner, pool, pending, path_iter)
        while pending and not runner.stopping:
            chunk = _next_chunk(runner, pool, pending, path_iter)
            try:
                records = process_batch(task, chunk, recovery=recovery)
            finally:
                runner.batch_size = stats.batch_size = recovery.batch_size
                if recovery.device_label:
                    stats.device = recovery.device_label
            late = late_load_s(task) - loaded
            if late > 0:  # the model loaded in this batch: load time, not iteration
                loaded += late
                stats.load_s += late
            yield records
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown()
        flush_store(task)


def _submit_more(runner: Runner, pool: DecodePool, pending: deque, path_iter: Iterator[Path]) -> None:
    """Keep a bounded window: enough decoded images for the next two batches, no more."""
    while len(pending) < 2 * runner.batch_size + runner.workers and not runner.stopping:
        path = next(path_iter, None)
        if path is None:
            return
        pending.append((path, pool.submit(path)))


def _next_chunk(runner: Runner, pool: DecodePool, pending: deque,
                path_iter: Iterator[Path]) -> list[tuple[Path, Sample | ImageError]]:
    """The next ``batch_size`` decode results, in input order, refilling the window as they come."""
    chunk: list[tuple[Path, Sample | ImageError]] = []
    while pending and len(chunk) < runner.batch_size:
        path, fut = pending.popleft()
        try:
            chunk.append((path, pool.result(fut)))  # the model's thread decodes while it waits
        except ImageError as exc:
            chunk.append((path, exc))
        _submit_more(runner, pool, pending, path_iter)
    return chunk
