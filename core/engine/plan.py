"""What a run will do: find the images, pick and prove the device, set threads, choose dtype and
batch size, load the task. ``start(config)`` does this slow set-up once and returns a ``Runner``.

A classify run on OpenVINO or ONNX Runtime whose model was converted before is served from the
saved export (``tasks.load_task_from_export``) and never imports torch or transformers; so
is a run of torch's CPU image tower beside OpenVINO's text tower (``--backend auto`` on an AMX CPU)
until a photo that is not in the embedding store needs the image tower. Every other run loads the
model with transformers (and converts it for a backend the first time).
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager

from .. import hardware as devices
from .. import backends, models
from ..arrays import dtype_name
from ..config import RunConfig
from ..errors import UsageError
from ..input import IMAGE_EXTENSIONS, discover
from ..tasks import Task, load_task, load_task_from_export, store_holds, stored_caption_task
from .local import local_runner
from .runner import Runner, now
from .store_lookup import attach_store

if TYPE_CHECKING:  # imported by the runs that use it
    import torch

log = logging.getLogger(__name__)


def find_images(config: RunConfig) -> list[Path]:
    """Every image path under ``config.inputs``, in processing order (see ``core.input.discover``)."""
    return list(discover(config.inputs, recursive=config.recursive, follow_symlinks=config.follow_symlinks,
                         include_hidden=config.include_hidden))


def _load(config: RunConfig, device: torch.device, dtype: torch.dtype,
          backend: backends.BackendChoice | None = None) -> Task:
    """The task with its model loaded, quantized when asked, given its backend and moved to
    ``device`` (its ``setup`` builds the encoders: a conversion on a backend's first run)."""
    task = load_task(config, device, dtype)
    on_torch = backend is None or backend.name == "torch"
    if config.quantize == "int8" and on_torch:  # caption only: classify's int8 is the backends'
        models.quantize_int8(task.model, task.int8_modules())
    if hasattr(type(task), "backend"):
        task.backend = backend
    attach_store(task, config)  # before setup: the label features are read from the store too
    task.to(device, dtype)
    return task


def _load_compiled(config: RunConfig, backend: backends.BackendChoice, dtype: str | None,
                   paths: list[Path]) -> Task | None:
    """The torch-free task of a classify run on a saved OpenVINO / ONNX Runtime conversion (or
    torch's image tower with OpenVINO's text tower, ``dtype`` the image tower's), set up (towers
    compiled, labels encoded), or ``None`` (see ``tasks.load_task_from_export``).

    On torch, the run starts without torch only when the embedding store holds the photos (a
    sample of ``paths``, ``tasks.store_holds``): otherwise the image tower would
    load anyway, after OpenVINO and the text tower, for nothing (``--no-store``, a new folder)."""
    task = load_task_from_export(config, backend, dtype)
    if task is None:
        return None
    attach_store(task, config)
    if backend.name == "torch":
        task.open()
        if not store_holds(task.store, paths):
            if task.store_opener is not None:
                task.store_opener.close()
            log.info("the embedding store does not hold these photos: loading the model with torch")
            return None
    task.to(devices.HOST_CPU, "float32")
    return task


def model_key(config: RunConfig) -> str:
    """A classify or caption run's model folder (the size rule's key in this machine's run records,
    and where its saved conversions are found); ``""`` for another task or a model not on disk."""
    if config.task not in ("classify", "caption"):
        return ""
    try:
        return str(models.resolve(models.model_for(config.task, config.lang, config.model)))
    except Exception:  # not cached, no hub: the run's own load says so
        return ""


def record_run(run: Runner, backend: backends.BackendChoice, converted: bool, threads: int) -> None:
    """Add a finished local classify or caption run on the CPU to this machine's records
    (``hardware.speeds``): its photos (those not served by the embedding or caption store), steady
    images/s and load seconds, under the path it ran (``openvino/int8``, ``torch/float32``...); a
    caption run's load counts as a conversion only when it converted BLIP's towers."""
    task, stats = run.task, run.stats
    encoder = getattr(task, "image_encoder", None)
    runtime = getattr(task, "runtime", False)  # caption: BLIP's OpenVINO towers, None on torch
    if not backend.model or (encoder is None and runtime is False) or stats.images == 0:
        return
    if backend.name == "torch" or runtime is None:
        path = f"torch/{dtype_name(task.dtype)}"
    elif encoder is None:
        path, converted = f"{backend.name}/{'int8' if backend.int8 else 'float'}", bool(runtime.converted)
    else:
        path = f"{backend.name}/{backends.quantized(encoder) or 'float'}"
    fresh = max(0, stats.images - stats.cached)
    devices.record_run(backend.model, threads, path, images=fresh,
                      images_per_s=stats.steady_images_per_s if stats.cached == 0 else 0.0,
                      load_s=stats.load_s, converted=converted)


def _choose_backend(config: RunConfig, paths: list[Path], threads: int) -> tuple[backends.BackendChoice,
                                                                                  devices.DeviceChoice | None]:
    """The run's backend and, for torch, the proven torch device (``None`` for OpenVINO and ONNX
    Runtime, which are never asked for a torch device: their inputs are made on the CPU, and for
    torch on a CPU-only machine when its text tower is OpenVINO's: that run may never need torch).
    The ``auto`` rule proves a torch device only where this machine may have an accelerator
    (``hardware.accelerator_present``); on a CPU-only machine it imports no torch."""
    proven: list[devices.DeviceChoice] = []

    def torch_device() -> str:
        if config.device in ("auto", "cpu") and not devices.accelerator_present():
            return "cpu"
        proven.append(devices.select_device(config.device))  # logs each candidate whose probe failed
        return proven[-1].device.type

    backend = backends.plan_backend(config.backend, config.device, task=config.task, dtype=config.dtype,
                                    int8=config.quantize == "int8", threads=threads, paths=paths,
                                    torch_device=torch_device, model=model_key(config),
                                    int8_allowed=config.quantize != "none")
    if backend.name != "torch" or (not proven and backend.text_backend != "torch"):
        return backend, None
    if config.task == "caption" and not proven and torch_device() == "cpu":
        return backend, None  # a CPU-only machine (torch_device proved nothing): a run the caption store serves needs no torch
    return backend, proven[-1] if proven else devices.select_device(config.device)


def start(config: RunConfig, *, paths: list[Path] | None = None,
          loading: Callable[[dict[str, Any]], ContextManager[Any]] | None = None) -> Runner:
    """Prepare a run: find images, pick and prove the device, set threads, load the model.

    Args:
        config: the validated run configuration.
        paths: images to process instead of discovering them (used by ``--resume``).
        loading: called once everything but the model is settled, with the plan (``task``,
            ``images``, ``model``, ``device``, ``dtype``, ``quantize``, ``threads``,
            ``batch_size``); the context manager it returns is held while the model loads (the
            CLI prints its start line and a "loading model" spinner there).

    Returns:
        A ``Runner`` ready to iterate.

    Raises:
        UsageError: no images found, ``--quantize`` on an accelerator, or a backend that is not
            installed or cannot run this task (``backends.plan_backend``).
        DeviceError: an explicitly requested device is unusable, or the backend has no such device.
        ModelLoadError: the model cannot be loaded (or converted for the backend).
    """
    started = now()
    if paths is None:
        paths = find_images(config)
        if not paths:
            raise UsageError("no images found in " + ", ".join(str(p) for p in config.inputs)
                             + " (extensions: " + " ".join(sorted(e[1:] for e in IMAGE_EXTENSIONS)) + ")")
    threads, _ = devices.resolve_threads(config.threads)
    backend, choice = _choose_backend(config, paths, threads)
    cpu_dtype = None  # torch's dtype on the CPU, decided without torch (a run that may not need it)
    if choice is None and backend.name == "torch":
        batch = config.batch_size or devices.default_batch_size(devices.HOST_CPU, config.task)
        cpu_dtype = "float32" if config.quantize else devices.cpu_dtype_without_torch(config.dtype, batch, threads)
        if cpu_dtype is None:  # e.g. bf16 never calibrated here: torch measures it
            choice = devices.select_device(config.device)
    if choice is None:  # OpenVINO / ONNX Runtime: their own device names, the CPU makes the inputs
        choice = devices.DeviceChoice(devices.HOST_CPU, auto=backend.name == "torch" and config.device == "auto",
                                      reason=backend.reason)
    else:
        threads = devices.configure_threads(config.threads)  # before dtype: the bf16 check runs on these
    if config.quantize == "int8" and choice.device.type != "cpu":
        raise UsageError(f"--quantize {config.quantize} runs on the CPU only; the device here is "
                         f"{choice.device} (use --device cpu, or leave out --quantize)")
    batch_size = config.batch_size or devices.default_batch_size(choice.device, config.task)
    dtype: Any = "float32"  # OpenVINO / ONNX Runtime: the backend's precision (``plan`` below)
    if cpu_dtype is not None:
        dtype = cpu_dtype
    elif backend.name == "torch":
        import torch

        # int8 Linear layers take float32 activations: no autocast on top of them.
        dtype = torch.float32 if config.quantize == "int8" else devices.select_dtype(choice.device, config.dtype, batch_size)
    workers = devices.decode_workers(threads, config.decode_workers, accelerator=choice.device.type != "cpu")
    plan = {"task": config.head or config.task, "images": len(paths),
            "model": models.model_for(config.task, config.lang, config.model), "device": str(choice.device),
            "dtype": dtype_name(dtype), "quantize": config.quantize, "threads": threads,
            "batch_size": batch_size, "backend": backend.name,
            "route": backend.reason if backend.model else ""}
    if backend.name != "torch":  # the backend's own device name and precision request
        plan.update(device=backend.device, dtype=config.dtype)
    with loading(plan) if loading is not None else nullcontext():
        t0 = time.perf_counter()
        task = _load_compiled(config, backend, dtype_name(dtype), paths) if choice.device is devices.HOST_CPU else None
        if task is None and config.task == "caption" and choice.device is devices.HOST_CPU:
            task = stored_caption_task(config, backend.name, dtype_name(dtype), paths,
                                       lambda: _load_torch(config, choice, dtype, backend, threads)[0])
        converted = task is None and backend.name != "torch"
        if task is None:
            task, choice = _load_torch(config, choice, dtype, backend, threads)
        load_s = time.perf_counter() - t0
    run = local_runner(config, paths, task, choice, threads, workers, batch_size, load_s, started)
    run.on_finish = lambda done: record_run(done, backend, converted, threads)
    if backend.name != "torch":
        run.stats.device = backend.device
    return run


def _load_torch(config: RunConfig, choice: devices.DeviceChoice, dtype: Any, backend: backends.BackendChoice,
                threads: int) -> tuple[Task, devices.DeviceChoice]:
    """``_load`` for a run that loads the model with transformers; an OpenVINO / ONNX Runtime run
    that gets here (no saved export yet) takes the torch CPU device and float32, and sets torch's
    threads, for the model it converts; a torch run that got here without torch keeps the dtype
    decided without it (``hardware.cpu_dtype_without_torch``: ``select_dtype``'s rule)."""
    if choice.device is devices.HOST_CPU:
        import torch

        devices.configure_threads(threads)
        choice = devices.DeviceChoice(torch.device("cpu"), auto=choice.auto, reason=choice.reason)
        dtype = getattr(torch, dtype_name(dtype)) if backend.name == "torch" else torch.float32
    return _load(config, choice.device, dtype, backend), choice
