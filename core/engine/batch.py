"""The batch function: decoded images in, records out.

``process_batch(task, items)`` takes ``(path, Sample or ImageError)`` pairs (what a
``core.input.DecodePool`` gives) and returns one record per pair, in order: an error record for an
image that could not be read, else the task's record. It needs a loaded task and nothing else: no
CLI, no writer, no process-wide setting, so a Ray Data ``map_batches`` actor on another machine
can call it as the local engine does. Device faults go through a ``Recovery`` (OOM back-off, CPU
fallback, ``DeviceFault``); an error that is not a device fault is retried image by image, so only
the image that causes it gets an ``inference`` error record.
"""

from __future__ import annotations

import logging
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Union

from .. import hardware as devices
from ..errors import ImageError, ModelLoadError, describe
from ..input import Sample
from ..output import ImageRecord
from ..tasks import Task
from .recovery import Recovery
from .store_lookup import remember_decoded

if TYPE_CHECKING:  # torch is imported only by runs that use it (core/lazy.py)
    import torch

log = logging.getLogger("wwts")

#: One input of the batch function: the image's path and its decode pool result.
Item = tuple[Union[Path, str], Union[Sample, ImageError]]


def base_record(task: Task, path: Path | str, item: Sample | ImageError) -> ImageRecord:
    """The ``task.record_type`` record of one item before the model: path, width, height,
    frames (only when over 1) and note; for an ``ImageError``, path and ``error``. Record types
    with a ``cached`` field get ``item.cached``, with ``content_hash`` the item's store key."""
    if isinstance(item, ImageError):
        return task.record_type(path=str(path), error=str(item))
    d = item.decoded
    names = {f.name for f in fields(task.record_type)}
    extra = {name: value for name, value in (("cached", item.cached), ("content_hash", item.key)) if name in names}
    return task.record_type(path=str(path), width=d.width, height=d.height,
                            frames=d.frames if d.frames > 1 else None, note=d.note, **extra)


def to_device(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Copy input tensors to ``device`` (asynchronously from pinned memory on CUDA); other values
    and CPU runs pass through."""
    if device.type == "cpu":
        return inputs
    import torch

    cuda = device.type == "cuda"
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            if cuda:
                v = v.pin_memory()
            v = v.to(device, non_blocking=cuda)
        out[k] = v
    return out


def run_model(task: Task, prepared: Sequence[Any], bases: Sequence[ImageRecord]) -> list[ImageRecord]:
    """One forward pass: ``collate`` → device → ``forward`` (under inference mode and autocast for a
    torch task; a task with ``uses_torch = False`` runs as it is) → ``postprocess``. Exceptions propagate.

    ``prepared``: each image's ``Sample`` (its ``inputs`` are collated; when every one has a store
    ``key``, the keys go to ``forward`` as ``inputs["keys"]``), or bare ``prepare`` outputs."""
    samples = [p for p in prepared if isinstance(p, Sample)]
    keys = [s.key for s in samples]
    inputs = task.collate([p.inputs if isinstance(p, Sample) else p for p in prepared])
    if samples and len(samples) == len(prepared) and all(k is not None for k in keys):
        inputs["keys"] = keys
    inputs = to_device(inputs, task.device)
    if getattr(task, "uses_torch", True):
        import torch

        with torch.inference_mode(), devices.autocast(task.device, task.dtype):
            outputs = task.forward(inputs)
    else:  # OpenVINO / ONNX Runtime towers, NumPy in and out (a saved export, tasks.exports)
        outputs = task.forward(inputs)
    return task.postprocess(outputs, list(bases))


def infer(task: Task, prepared: Sequence[Any], bases: Sequence[ImageRecord], recovery: Recovery) -> list[ImageRecord]:
    """``run_model`` over ``prepared`` in slices of ``recovery.batch_size``, with device faults
    handled by ``recovery`` and any other failure retried image by image.

    Raises:
        DeviceFault: from ``recovery``.
        ModelLoadError: a tower loaded on first use (``backends.LazyTower``) could not load.
    """
    out: list[ImageRecord] = []
    i = 0
    while i < len(bases):
        n = min(recovery.batch_size, len(bases) - i)
        part, part_bases = prepared[i:i + n], bases[i:i + n]
        try:
            records = run_model(task, part, part_bases)
        except ModelLoadError:
            raise  # a tower loaded on first use could not load: every image would fail the same way
        except Exception as exc:
            if recovery.handle(exc, n):
                continue
            if n == 1:
                records = [replace(part_bases[0], error=f"inference: {describe(exc)}")]
            else:
                # Not a device problem: find the image that causes it, one at a time.
                log.warning("a batch failed (%s); retrying its images one by one", describe(exc))
                records = [r for p, b in zip(part, part_bases) for r in infer(task, [p], [b], recovery)]
        out.extend(records)
        i += n
    return out


def process_batch(task: Task, items: Sequence[Item], *, recovery: Recovery | None = None) -> list[ImageRecord]:
    """Records for ``items`` (``(path, Sample or ImageError)`` pairs), one each, in order.

    Args:
        task: a loaded task on its device (``task.to`` done).
        items: decoded images with the task's ``prepare`` output as ``Sample.inputs``, or the
            ``ImageError`` their decoding raised.
        recovery: the run's fault policy and state (batch size, events); ``None``: a fresh one
            for this call alone (all items in one forward pass, ``auto=False``).

    Returns:
        ``task.record_type`` records: the task's fields, or ``error`` set (the decode error, an
        ``inference: ...`` error, or the task's own, e.g. ``nonfinite: ...``).

    Raises:
        DeviceFault: the device failed in a way the process cannot recover from.
    """
    records = [base_record(task, path, item) for path, item in items]
    good = [i for i, (_, item) in enumerate(items) if not isinstance(item, ImageError)]
    remember_decoded(task, items)  # their size and notes go in the store with their embeddings
    if good:
        if recovery is None:
            recovery = Recovery(task, batch_size=len(good))
        done = infer(task, [items[i][1] for i in good], [records[i] for i in good], recovery)
        for i, record in zip(good, done):
            records[i] = record
    return records
