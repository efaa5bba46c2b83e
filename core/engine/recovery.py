"""Device faults during a run: out-of-memory back-off, the MPS fallback, a poisoned CUDA context.

An out-of-memory error on an accelerator halves the batch size and retries the same images, down
to 1; if one image still does not fit and the device was chosen automatically, the model moves to
the CPU and the run finishes there (on a device the user asked for, ``DeviceFault``). An op that
Apple MPS does not implement sends the rest of the run to the CPU. Errors that poison a CUDA
context raise ``DeviceFault``. Anything else is not a device fault: ``handle`` says so and the
batch function retries the images one by one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .. import hardware as devices
from ..arrays import dtype_name
from ..errors import DeviceFault, describe
from ..tasks import Task

log = logging.getLogger("wwts")

#: Lower-cased fragments of CUDA errors after which the process's CUDA context is unusable.
POISON_MARKERS = ("device-side assert", "cuda error", "illegal memory access", "cublas_status",
                  "cudnn_status", "unspecified launch failure")


@dataclass
class Recovery:
    """The fault policy of one run and what it changed; one per local run (``local.local_batches``),
    per model actor on a cluster, or per call of ``process_batch`` when none is given.

    Attributes:
        task: the task whose device may change (``task.to``).
        batch_size: largest number of images per forward pass (halved after an OOM error).
        auto: the device was chosen automatically, so OOM at batch size 1 may move the run to the
            CPU instead of failing.
        events: one line per thing that happened (also logged as warnings on ``wwts``).
        device_label: ``"cuda:0→cpu"`` once the run moved to the CPU, else ``None``.
    """

    task: Task
    batch_size: int
    auto: bool = False
    events: list[str] = field(default_factory=list)
    device_label: str | None = None

    def handle(self, exc: BaseException, n: int) -> bool:
        """React to ``exc`` raised by a forward pass over ``n`` images; True when the same images
        should be tried again (at the new ``batch_size``, or on the CPU).

        Raises:
            DeviceFault: an error that poisons the CUDA context, or OOM at batch size 1 on a
                device that was not chosen automatically.
        """
        dev = self.task.device
        if dev.type == "cpu":
            return False
        if devices.is_oom_error(exc):
            return self._out_of_memory(exc, n)
        if dev.type == "mps" and isinstance(exc, NotImplementedError):
            self.to_cpu(f"an operation is not implemented on MPS ({describe(exc)})")
            return True
        if dev.type == "cuda" and any(m in str(exc).lower() for m in POISON_MARKERS):
            raise DeviceFault(f"CUDA failed and cannot continue in this process: {describe(exc)}") from exc
        return False

    def _out_of_memory(self, exc: BaseException, n: int) -> bool:
        dev = self.task.device
        devices.empty_cache(dev)
        if n > 1:
            new = max(1, n // 2)
            self.event(f"out of memory on {dev} at batch size {n}; retrying at {new}")
            self.batch_size = new
            return True
        if not self.auto:
            raise DeviceFault(f"out of memory on {dev} even at batch size 1; "
                              "use --device cpu or a smaller model") from exc
        self.to_cpu(f"out of memory on {dev} even at batch size 1")
        return True

    def to_cpu(self, why: str) -> None:
        """Move the task to the CPU (dtype chosen for it, batch size at least the CPU default)."""
        import torch  # only a run on an accelerator gets here

        old = self.task.device
        cpu = torch.device("cpu")
        self.batch_size = max(self.batch_size, devices.default_batch_size(cpu, self.task.name))
        dtype = devices.select_dtype(cpu, "auto", self.batch_size)
        self.task.to(cpu, dtype)
        devices.empty_cache(old)
        self.device_label = f"{old}→cpu"
        self.event(f"{why}: the rest of the run goes to the CPU ({dtype_name(dtype)}, "
                   f"batch size {self.batch_size})")

    def event(self, message: str) -> None:
        """Log ``message`` as a warning and keep it in ``events``."""
        log.warning(message)
        self.events.append(message)
