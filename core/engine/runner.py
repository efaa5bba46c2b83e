"""The runner: one prepared run, whoever computes its records.

A ``Runner`` (made by ``plan.start`` for this machine, by ``core.cluster.start`` for a Ray
cluster) yields one record per image; it never prints and never writes files: the CLI consumes
the iterator (progress bar, writers), like simonw/llm's CLI wraps its embeddings generator.
Where the records are computed is its *distributor*, a generator function
``distribute(runner) -> Iterator[list[ImageRecord]]`` (the shape of rom1504/clip-retrieval's
``clip_inference/runner.py`` + ``distributor.py``): ``local.local_batches`` (decode threads and
the model in this process) or ``core.cluster``'s Ray Data pipeline. The runner owns what both
share: the ``run`` section (``info()``), the record count and times (``RunStats``), ``stop()``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import models
from ..arrays import dtype_name
from ..config import RunConfig
from ..output import ImageRecord


def now() -> str:
    """The local time as ISO 8601 with the UTC offset, to the second (``started`` / ``finished``)."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


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
    #: Where the model runs, as the summary names it (``cuda:0→cpu`` after a fallback, the Ray layout).
    device: str = ""
    events: list[str] = field(default_factory=list)
    #: Images whose embedding was read from the embedding store (not decoded, no image tower).
    cached: int = 0
    #: Seconds to the first batch's records (one-off set-up: oneDNN primitives, OpenVINO's first
    #: inference, cuDNN autotuning, filling the decode window; on a cluster the actors' start and
    #: model load) and how many images it held.
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

    def count(self, records: list[ImageRecord], seconds: float) -> None:
        """Add one batch of ``records``, done ``seconds`` after iteration began."""
        self.images += len(records)
        self.errors += sum(1 for r in records if r.error)
        self.cached += sum(1 for r in records if getattr(r, "cached", None))
        self.seconds = seconds
        if not self.first_batch_images:
            self.first_batch_s, self.first_batch_images = seconds, len(records)


#: A distributor: yields lists of records (one list per batch) for the runner's ``paths``.
Distributor = Callable[["Runner"], Iterator[list[ImageRecord]]]


class Runner:
    """One prepared run. Iterate it (or ``batches()``) to get records.

    Attributes:
        config: the ``RunConfig``.
        paths: every image to process; each gets exactly one record.
        distribute: where the records are computed (see the module docstring).
        settings: returns the ``run`` section's entries that depend on where the model runs (the
            task's settings, backend, store; on a cluster its layout); called by ``info()``.
        task: the loaded task (``None`` on a cluster: the model lives in the actors).
        device_choice: how the device was picked (``core.hardware.DeviceChoice``; ``None`` on a cluster).
        threads: torch intra-op threads; workers: image decode threads (``None`` on a cluster).
        batch_size: current mini-batch size (shrinks after an out-of-memory error).
        stats: ``RunStats``, updated while iterating.
        stopping: ``stop()`` was called; the distributor stops submitting work.
    """

    def __init__(self, config: RunConfig, paths: list[Path], distribute: Distributor, *,
                 settings: Callable[[], dict[str, Any]], batch_size: int, load_s: float, device: str, started: str,
                 threads: Any, workers: int | None = None, task: Any = None, device_choice: Any = None,
                 dtype: Any = None) -> None:
        self.config = config
        self.paths = paths
        self.distribute = distribute
        self.settings = settings
        self.task = task
        self.device_choice = device_choice
        self.threads = threads
        self.workers = workers
        self.batch_size = batch_size
        self.started = started
        self.stats = RunStats(load_s=load_s, batch_size=batch_size, device=device)
        self.stopping = False
        self._dtype = dtype
        #: called with the runner once its iteration ended (the engine records the run's speed)
        self.on_finish: Callable[[Runner], None] | None = None

    @property
    def total(self) -> int:
        """Number of images the run will produce records for."""
        return len(self.paths)

    @property
    def device(self) -> Any:
        """Where the task runs now (a ``torch.device``; the CPU after a fallback). On a cluster,
        ``stats.device``: the layout (``"Ray 1 node, 2 CPUs, 0 GPUs: 1 cpu actor"``)."""
        return self.task.device if self.task is not None else self.stats.device

    @property
    def dtype(self) -> Any:
        """The compute dtype now (the task's ``torch.dtype``; on a cluster the probe's name)."""
        return self.task.dtype if self.task is not None else self._dtype

    def stop(self) -> None:
        """Ask the run to stop after the batch in flight (used on Ctrl-C / SIGTERM)."""
        self.stopping = True

    def info(self) -> dict[str, Any]:
        """The ``run`` section: model, device, dtype, threads, batch size, where-specific
        ``settings()``, then once records came the times (``seconds``, ``images_per_s``,
        ``first_batch_s``, ``steady_images_per_s``), ``errors``, ``cached``, ``finished``, ``events``."""
        from .. import __version__

        info: dict[str, Any] = {
            "wwts": __version__,
            "task": self.config.task,
            "model": models.model_for(self.config.task, self.config.lang, self.config.model),
            "device": self.stats.device,  # e.g. "cuda:0→cpu" after a fallback
            "dtype": dtype_name(self.dtype),
            "quantize": self.config.quantize,
            "threads": self.threads,
            "decode_workers": self.workers,
            "batch_size": self.stats.batch_size or self.batch_size,
            "images": self.total,
            "started": self.started,
            "load_s": round(self.stats.load_s, 3),
        }
        if self.workers is None:
            del info["decode_workers"]
        info.update(self.settings())
        stats = self.stats
        if stats.seconds:
            info.update(seconds=round(stats.seconds, 3), images_per_s=round(stats.images_per_s, 3),
                        first_batch_s=round(stats.first_batch_s, 3),
                        steady_images_per_s=round(stats.steady_images_per_s, 3),
                        errors=stats.errors, cached=stats.cached, finished=now())
        if stats.events:
            info["events"] = list(stats.events)
        return info

    def __iter__(self) -> Iterator[ImageRecord]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[ImageRecord]]:
        """Yield lists of records, one per batch, from the distributor; stops after the batch in
        flight once ``stop()`` was called. Seconds count iteration only: model load time the
        distributor adds to ``stats.load_s`` meanwhile (a tower loaded on first use) is not.

        Raises:
            WwtsError: what the distributor raises (``DeviceFault``: the device or the cluster
                failed); every record finished before it has been yielded.
        """
        t0 = time.perf_counter()
        load0 = self.stats.load_s
        batches = self.distribute(self)
        try:
            for records in batches:
                self.stats.count(records, time.perf_counter() - t0 - (self.stats.load_s - load0))
                yield records
                if self.stopping:
                    break
        finally:
            batches.close()
            self.stats.seconds = time.perf_counter() - t0 - (self.stats.load_s - load0)
            self.stats.batch_size = self.batch_size
            if self.on_finish is not None:
                self.on_finish(self)
