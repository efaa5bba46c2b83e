"""What a run will do: find the images, pick and prove the device, set threads, choose dtype and
batch size, load the task. ``start(config)`` does this slow set-up once and returns a ``Run``.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch

from .. import hardware as devices
from .. import models
from ..config import RunConfig
from ..errors import UsageError
from ..input import IMAGE_EXTENSIONS, discover
from ..tasks import Task, load_task
from .run import Run, now


def find_images(config: RunConfig) -> list[Path]:
    """Every image path under ``config.inputs``, in processing order (see ``core.input.discover``)."""
    return list(discover(config.inputs, recursive=config.recursive, follow_symlinks=config.follow_symlinks,
                         include_hidden=config.include_hidden))


def _load(config: RunConfig, device: torch.device, dtype: torch.dtype) -> Task:
    """The task with its model loaded, quantized when asked, and moved to ``device``."""
    task = load_task(config, device, dtype)
    if config.quantize == "int8":
        models.quantize_int8(task.model, task.int8_modules())
    task.to(device, dtype)
    return task


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
        UsageError: no images found, or ``--quantize`` on an accelerator.
        DeviceError: an explicitly requested device is unusable.
        ModelLoadError: the model cannot be loaded.
    """
    started = now()
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
    workers = devices.decode_workers(threads, config.decode_workers, accelerator=choice.device.type != "cpu")
    plan = {"task": config.task, "images": len(paths),
            "model": models.model_for(config.task, config.lang, config.model), "device": str(choice.device),
            "dtype": str(dtype).replace("torch.", ""), "quantize": config.quantize, "threads": threads,
            "batch_size": batch_size}
    with loading(plan) if loading is not None else nullcontext():
        t0 = time.perf_counter()
        task = _load(config, choice.device, dtype)
        load_s = time.perf_counter() - t0
    return Run(config, paths, task, choice, threads, workers, batch_size, load_s, started)
