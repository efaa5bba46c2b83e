"""The hardware plan in words: device, dtype, threads and batch size, each with its reason.

It sits above ``device``, ``dtype`` and ``cpu`` because it explains the choices all three make
(the one module of the package that reads all of them); ``wwts doctor`` shows it per task.
"""

from __future__ import annotations

import contextlib

import torch

from . import cpu
from .dtype import dtype_reason
from .choice import DeviceChoice, default_batch_size


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            return f"{device} ({torch.cuda.get_device_name(device.index or 0)})"
    return str(device)


def describe_plan(task: str, device_choice: DeviceChoice, dtype: torch.dtype, threads: int,
                  batch_size: int) -> str:
    """What wwts will do for ``task`` and why, in one line.

    Example: ``"classify on cpu (auto: no usable CUDA, MPS or XPU device), bfloat16 (CPU has
    native bf16 via AVX512-BF16; a ViT block measured bf16 at 1.60x float32 here (2026-11-27)),
    2 threads (physical cores), batch 8 (default for cpu)"``. No speed is promised: the images/s
    a run reaches is measured by the run itself.
    """
    dev = device_choice.device
    how = "auto" if device_choice.auto else "requested"
    dev_why = f"{how}: {device_choice.reason}" if device_choice.reason else how
    if device_choice.tried:
        dev_why += "; failed: " + "; ".join(f"{d} ({r})" for d, r in device_choice.tried)
    dtype_name = str(dtype).removeprefix("torch.")
    default_threads, source = cpu.resolve_threads()
    thread_why = source if threads == default_threads else "--threads"
    batch_why = (f"default for {dev.type}" if batch_size == default_batch_size(dev, task) else "--batch-size")
    if dev.type != "cpu":
        batch_why += "; halved on out-of-memory"
    text = (f"{task} on {_device_label(dev)} ({dev_why}), {dtype_name} ({dtype_reason(dev, dtype, batch_size)}), "
            f"{threads} threads ({thread_why}), batch {batch_size} ({batch_why})")
    return text
