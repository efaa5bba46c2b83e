"""The batching engine: discover → decode (thread pool) → mini-batches → model → records.

``start(config)`` does the slow set-up once (find images, choose and prove the device, set
threads, load the model, encode label text) and returns a ``Run``; iterating the ``Run`` yields
one record per image, in input order. The engine never prints and never writes files: the CLI
consumes the iterator (progress bar, writers), like simonw/llm's CLI wraps its embeddings
generator.

Fault handling (issue "doctor and devices"): an out-of-memory error on an accelerator halves the
batch size and retries the same images down to 1; if one image still does not fit and the device
was chosen automatically, the model moves to the CPU and the run finishes there. An op that Apple
MPS does not implement sends the rest of the run to the CPU. Errors that poison a CUDA context
raise ``DeviceFault`` after every finished record has been yielded. An error in one batch that is
not a device fault is retried image by image, so only the image that causes it gets an error
record.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from contextlib import nullcontext
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import torch

from wwts.core import hardware as devices
from wwts.core.config import RunConfig
from wwts.core.input import DecodePool
from wwts.core.input import IMAGE_EXTENSIONS, discover
from wwts.core.errors import DeviceFault, ImageError, UsageError, describe
from wwts.core.input import DecodedImage
from wwts.core.output import ImageRecord
from wwts.core.tasks.base import Task

log = logging.getLogger("wwts")

_POISON_MARKERS = ("device-side assert", "cuda error", "illegal memory access", "cublas_status",
                   "cudnn_status", "unspecified launch failure")


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def load_task(config: RunConfig, device: torch.device, dtype: torch.dtype) -> Task:
    """Build the task adapter for ``config.task`` (loads the model on the CPU).

    Raises:
        ModelLoadError: the model cannot be loaded.
    """
    if config.task == "classify":
        from wwts.core.tasks.classify import load_task as load
    else:
        from wwts.core.tasks.caption import load_task as load
    return load(config, device, dtype)


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

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


class Run:
    """One prepared run. Iterate it (or ``batches()``) to get records in input order.

    Attributes:
        config: the ``RunConfig``.
        paths: every image path found, in processing order.
        task: the loaded task adapter.
        device_choice: how the device was picked (``core.device.DeviceChoice``).
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
    def total(self) -> int:
        """Number of images the run will produce records for."""
        return len(self.paths)

    @property
    def device(self) -> torch.device:
        return self.task.device

    @property
    def dtype(self) -> torch.dtype:
        return self.task.dtype

    def info(self) -> dict[str, Any]:
        """The ``run`` section: model, device, dtype, threads, batch size, task settings, times."""
        from wwts.core import __version__
        from wwts.core.models import default_model

        info: dict[str, Any] = {
            "wwts": __version__,
            "task": self.config.task,
            "model": self.config.model or default_model(self.config.task, self.config.lang),
            "device": self.stats.device,  # e.g. "cuda:0→cpu" after a fallback
            "dtype": str(self.task.dtype).replace("torch.", ""),
            "quantize": self.config.quantize,
            "threads": self.threads,
            "decode_workers": self.workers,
            "batch_size": self.stats.batch_size or self.batch_size,
            "images": self.total,
            "started": self.started,
            "load_s": round(self.stats.load_s, 3),
        }
        info.update(self.task.run_info())
        if self.stats.seconds:
            info.update(
                seconds=round(self.stats.seconds, 3),
                images_per_s=round(self.stats.images_per_s, 3),
                errors=self.stats.errors,
                finished=_now(),
            )
        if self.stats.events:
            info["events"] = list(self.stats.events)
        return info

    def stop(self) -> None:
        """Ask the run to stop after the batch in flight (used on Ctrl-C / SIGTERM)."""
        self._stop = True

    def __iter__(self) -> Iterator[ImageRecord]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[ImageRecord]]:
        """Yield lists of records (one list per mini-batch), in input order.

        Raises:
            DeviceFault: the accelerator failed in a way that poisons the process; every record
                finished before the fault has been yielded.
        """
        t0 = time.perf_counter()
        task = self.task
        prepare = (lambda d: task.preprocess([d.image])) if task.per_image_preprocess else None
        pool = DecodePool(self.workers, draft_size=task.input_size, max_pixels=self.config.max_pixels,
                          allow_truncated=self.config.allow_truncated, prepare=prepare)
        pending: deque[tuple[Path, Future]] = deque()
        path_iter = iter(self.paths)

        def submit_more() -> None:
            # A bounded window: enough decoded images for the next two batches, no more.
            while len(pending) < 2 * self.batch_size + self.workers and not self._stop:
                path = next(path_iter, None)
                if path is None:
                    return
                pending.append((path, pool.submit(path)))

        try:
            submit_more()
            while pending and not self._stop:
                chunk: list[tuple[Path, DecodedImage | ImageError]] = []
                while pending and len(chunk) < self.batch_size:
                    path, fut = pending.popleft()
                    try:
                        chunk.append((path, fut.result()))
                    except ImageError as exc:
                        chunk.append((path, exc))
                    submit_more()
                records = self._process(chunk)
                self.stats.images += len(records)
                self.stats.errors += sum(1 for r in records if r.error)
                self.stats.seconds = time.perf_counter() - t0
                yield records
        finally:
            for _, fut in pending:
                fut.cancel()
            pool.shutdown()
            self.stats.seconds = time.perf_counter() - t0
            self.stats.batch_size = self.batch_size

    # -- one chunk ---------------------------------------------------------------------------

    def _process(self, chunk: list[tuple[Path, DecodedImage | ImageError]]) -> list[ImageRecord]:
        rtype = self.task.record_type
        records: list[ImageRecord] = []
        good: list[tuple[ImageRecord, DecodedImage]] = []
        for path, item in chunk:
            if isinstance(item, ImageError):
                records.append(rtype(path=str(path), error=str(item)))
            else:
                rec = rtype(path=str(path), width=item.width, height=item.height,
                            frames=item.frames if item.frames > 1 else None, note=item.note)
                records.append(rec)
                good.append((rec, item))
        if good:
            fields = self._infer([d for _, d in good])
            for (rec, _), f in zip(good, fields):
                if "error" in f:
                    rec.error = f["error"]
                else:
                    for key, value in f.items():
                        setattr(rec, key, value)
        return records

    def _forward(self, images: list[DecodedImage]) -> list[dict[str, Any]]:
        task = self.task
        if all(d.inputs is not None for d in images):
            inputs = task.collate([d.inputs for d in images])
        else:
            inputs = task.preprocess([d.image for d in images])
        inputs = self._move(inputs)
        with torch.inference_mode(), devices.autocast(task.device, task.dtype):
            outputs = task.forward(inputs)
        return task.postprocess(outputs)

    def _move(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Copy input tensors to the task's device (asynchronously from pinned memory on CUDA)."""
        dev = self.task.device
        if dev.type == "cpu":
            return inputs
        cuda = dev.type == "cuda"
        out = {}
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor):
                if cuda:
                    v = v.pin_memory()
                v = v.to(dev, non_blocking=cuda)
            out[k] = v
        return out

    def _infer(self, images: list[DecodedImage]) -> list[dict[str, Any]]:
        """Run the task on ``images`` with OOM back-off and CPU fallback; one dict per image."""
        out: list[dict[str, Any]] = []
        i = 0
        while i < len(images):
            sub = images[i:i + self.batch_size]
            try:
                fields = self._forward(sub)
            except Exception as exc:
                if self._recover(exc, len(sub)):
                    continue
                if len(sub) == 1:
                    fields = [{"error": f"inference: {describe(exc)}"}]
                else:
                    # Not a device problem: find the image that causes it, one at a time.
                    log.warning("a batch failed (%s); retrying its images one by one", _first_line(exc))
                    fields = [f for img in sub for f in self._infer([img])]
            out.extend(fields)
            i += len(sub)
        return out

    def _recover(self, exc: BaseException, n: int) -> bool:
        """Handle a device fault. True when the same images should be retried.

        Raises:
            DeviceFault: an error that poisons the CUDA context, or OOM at batch size 1 on an
                explicitly requested device.
        """
        dev = self.task.device
        if dev.type == "cpu":
            return False
        text = str(exc).lower()
        if devices.is_oom_error(exc):
            devices.empty_cache(dev)
            if n > 1:
                new = max(1, n // 2)
                self._event(f"out of memory on {dev} at batch size {n}; retrying at {new}")
                self.batch_size = new
                self.stats.batch_size = new
                return True
            if not self.device_choice.auto:
                raise DeviceFault(f"out of memory on {dev} even at batch size 1; "
                                  "use --device cpu or a smaller model") from exc
            self._to_cpu(f"out of memory on {dev} even at batch size 1")
            return True
        if dev.type == "mps" and isinstance(exc, NotImplementedError):
            self._to_cpu(f"an operation is not implemented on MPS ({_first_line(exc)})")
            return True
        if dev.type == "cuda" and any(m in text for m in _POISON_MARKERS):
            raise DeviceFault(f"CUDA failed and cannot continue in this process: {_first_line(exc)}") from exc
        return False

    def _to_cpu(self, why: str) -> None:
        old = self.task.device
        cpu = torch.device("cpu")
        self.batch_size = max(self.batch_size, devices.default_batch_size(cpu, self.config.task))
        dtype = devices.select_dtype(cpu, "auto", self.batch_size)
        self.task.to(cpu, dtype)
        devices.empty_cache(old)
        self.stats.batch_size = self.batch_size
        self.stats.device = f"{old}→cpu"
        self._event(f"{why}: the rest of the run goes to the CPU ({str(dtype).replace('torch.', '')}, "
                    f"batch size {self.batch_size})")

    def _event(self, message: str) -> None:
        log.warning(message)
        self.stats.events.append(message)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def find_images(config: RunConfig) -> list[Path]:
    """Every image path under ``config.inputs``, in processing order (see ``core.discover``)."""
    return list(discover(config.inputs, recursive=config.recursive, follow_symlinks=config.follow_symlinks,
                         include_hidden=config.include_hidden))


def start(config: RunConfig, *, paths: list[Path] | None = None,
          loading: Callable[[dict[str, Any]], ContextManager[Any]] | None = None) -> Run:
    """Prepare a run: find images, pick and prove the device, set threads, load the model.

    Args:
        config: the validated run configuration.
        paths: images to process instead of discovering them (used by ``--resume``).
        loading: called once everything but the model is settled, with the plan (``task``,
            ``images``, ``model``, ``device``, ``dtype``, ``quantize``, ``threads``,
            ``batch_size``); the context manager it returns is held while the model loads (the
            CLI prints its start line and a "loading model" spinner there).

    Returns:
        A ``Run`` ready to iterate.

    Raises:
        UsageError: no images found.
        DeviceError: an explicitly requested device is unusable.
        ModelLoadError: the model cannot be loaded.
    """
    started = _now()
    if paths is None:
        paths = find_images(config)
        if not paths:
            raise UsageError("no images found in " + ", ".join(str(p) for p in config.inputs)
                             + " (extensions: " + " ".join(sorted(e[1:] for e in IMAGE_EXTENSIONS)) + ")")
    choice = devices.select_device(config.device)  # logs each candidate whose probe failed
    threads = devices.configure_threads(config.threads)  # before dtype: the bf16 check runs on these threads
    if config.quantize and choice.device.type != "cpu":
        raise UsageError(f"--quantize {config.quantize} runs on the CPU only; the device here is "
                         f"{choice.device} (use --device cpu, or leave out --quantize)")
    batch_size = config.batch_size or devices.default_batch_size(choice.device, config.task)
    # int8 Linear layers take float32 activations: no autocast on top of them.
    dtype = torch.float32 if config.quantize else devices.select_dtype(choice.device, config.dtype, batch_size)
    workers = devices.decode_workers(threads, config.decode_workers,
                                     accelerator=choice.device.type != "cpu")
    from wwts.core.models import default_model

    plan = {"task": config.task, "images": len(paths),
            "model": config.model or default_model(config.task, config.lang), "device": str(choice.device),
            "dtype": str(dtype).replace("torch.", ""), "quantize": config.quantize, "threads": threads,
            "batch_size": batch_size}
    with loading(plan) if loading is not None else nullcontext():
        t0 = time.perf_counter()
        task = load_task(config, choice.device, dtype)
        if config.quantize == "int8":
            from wwts.core.models import quantize_int8

            quantize_int8(task.model, task.int8_modules())
        task.to(choice.device, dtype)
        load_s = time.perf_counter() - t0
    return Run(config, paths, task, choice, threads, workers, batch_size, load_s, started)
