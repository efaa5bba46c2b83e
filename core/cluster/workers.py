"""What runs on the cluster's nodes: the probe, the decode step and the model actor.

Each is a plain function or class that Ray Data calls; none imports Ray. They use wwts' own code
exactly as a local run does: ``core.input.DecodePool`` (``load_image``, the isolated decode of
HEIF/AVIF/TIFF, the task's ``prepare``) in the decode step, ``engine.start`` (device proven,
threads, dtype, batch size, task loaded) and ``engine.process_batch`` in the model actor.

Between the steps rows travel as pickled bytes: a decode result is ``("ok", Sample)`` or
``("error", category, message)`` (an ``ImageError`` does not survive pickling as an exception),
and a model result is the task's record dataclass, so the driver gets the very records a local
run makes.
"""

from __future__ import annotations

import copy
import logging
import logging.handlers
import os
import pickle
import socket
from dataclasses import replace
from typing import Any

import numpy as np

from .. import engine
from ..config import RunConfig
from ..env import configure_libraries, prepare_environment
from ..errors import ImageError, WwtsError
from ..input import DecodePool, Sample

log = logging.getLogger("wwts")

#: Fault injection, for tests and drills: when the file this variable names exists on a node,
#: the model actor that first removes it dies (``os._exit``) in the middle of that batch, like a
#: lost node. Ray restarts the actor and retries the batch; the run must lose and duplicate
#: nothing.
FAULT_FILE_ENV = "WWTS_RAY_FAULT_FILE"

def _configure(config: RunConfig) -> None:
    """This run's process-wide settings in this worker process (Pillow's pixel limit, log
    levels), on every call: a worker process may serve several runs of one driver, and both
    calls are cheap and idempotent."""
    prepare_environment()
    configure_libraries(config)


# -- the probe: one model load before the run, where an actor would run -------------------------


def probe(config: RunConfig) -> dict[str, Any]:
    """Plan and load the task on a node as an actor would, and report what the driver needs.

    Returns:
        ``{"info": Runner.info() there (device, dtype, threads, batch size, task settings),
        "input_size" and "draft_keep": for draft decoding, "preparer": the task without its weights, pickled,
        or None when its ``prepare`` does not survive that, "warnings": [messages]}``; or
        ``{"error": (exception class name, message)}`` for a ``WwtsError`` (model not found,
        device unusable...), which the driver raises as itself (exit 2 before any image).
    """
    handler = logging.handlers.BufferingHandler(capacity=1_000_000)  # the warnings logged on ``wwts`` meanwhile
    handler.setLevel(logging.WARNING)
    logging.getLogger("wwts").addHandler(handler)
    try:
        _configure(config)
        run = engine.start(config, paths=[])
        return {"info": run.info(), "input_size": run.task.input_size, "draft_keep": run.task.draft_keep,
                "preparer": _preparer(run.task),
                "warnings": _messages(handler)}
    except WwtsError as exc:
        return {"error": (type(exc).__name__, str(exc)), "warnings": _messages(handler)}
    finally:
        logging.getLogger("wwts").removeHandler(handler)


def _messages(handler: logging.handlers.BufferingHandler) -> list[str]:
    """The messages the probe's handler kept, in order."""
    return [record.getMessage() for record in handler.buffer]


def model_free(task: Any) -> Any:
    """A shallow copy of ``task`` for the decode workers, without its weights: every attribute
    that is, or directly holds, a ``torch.nn.Module`` or a tensor (the model, the encoders, the
    label features), or that does not pickle (an open embedding store, a compiled OpenVINO
    model), is ``None``. What is left (config, processor, prompts) is what ``prepare`` needs."""
    import torch

    heavy = (torch.nn.Module, torch.Tensor)
    light = copy.copy(task)
    for name, value in vars(task).items():
        inner = getattr(value, "__dict__", None)
        if isinstance(value, heavy) or (isinstance(inner, dict) and any(isinstance(v, heavy) for v in inner.values())):
            setattr(light, name, None)
            continue
        try:
            pickle.dumps(value)
        except Exception:
            setattr(light, name, None)
    return light


def _preparer(task: Any) -> bytes | None:
    """``model_free(task)`` pickled, when it pickles and its ``prepare`` gives what the task's own
    does on a test image; ``None`` otherwise (the actor then prepares, after the decode step)."""
    import torch
    from PIL import Image

    image = Image.new("RGB", (64, 48), (120, 60, 30))
    try:
        blob = pickle.dumps(model_free(task))
        got, want = pickle.loads(blob).prepare(image), task.prepare(image)
    except Exception as exc:  # an attribute that does not pickle, or prepare needs the model
        log.debug("the decode tasks cannot run this task's prepare (%s); the actors will", exc)
        return None
    if isinstance(want, torch.Tensor):
        return blob if isinstance(got, torch.Tensor) and torch.equal(got, want) else None
    return blob if type(got) is type(want) else None


# -- the decode step: CPU tasks -------------------------------------------------------------------

_pool: tuple[Any, DecodePool] | None = None


def _decode_pool(key: Any, make) -> DecodePool:
    """This worker process's decode pool for run ``key`` (made once: the isolated worker
    process for HEIF/AVIF/TIFF starts on first use and is kept across batches)."""
    global _pool
    if _pool is None or _pool[0] != key:
        if _pool is not None:
            _pool[1].shutdown()
        _pool = (key, make())
    return _pool[1]


def decode_batch(batch: dict[str, np.ndarray], *, config: RunConfig, run_id: str, input_size: int | None,
                 preparer: bytes | None, draft_keep: int = 2) -> dict[str, list]:
    """Decode (and prepare) the images of a Ray Data batch.

    Args:
        batch: ``{"path": the record's path as the driver found it, "file": absolute path to open}``.
        config: the run's config (``max_pixels``, ``allow_truncated``).
        run_id: names the run, so a worker process reuses its pool within a run only.
        input_size: the model's input side, for draft decoding.
        draft_keep: the task's ``draft_keep`` (``Task.draft_keep``).
        preparer: ``model_free(task)`` pickled; ``None``: decode only (the actor prepares).

    Returns:
        ``{"path": [...], "sample": [pickled ("ok", Sample) or ("error", category, message)]}``.
    """
    _configure(config)

    def make() -> DecodePool:
        transform = pickle.loads(preparer).prepare if preparer is not None else None
        return DecodePool(1, draft_size=input_size, draft_keep=draft_keep, max_pixels=config.max_pixels,
                          allow_truncated=config.allow_truncated, transform=transform)

    pool = _decode_pool(run_id, make)
    futures = [pool.submit(file) for file in batch["file"]]
    samples = []
    for fut in futures:
        try:
            samples.append(pickle.dumps(("ok", pool.result(fut)), protocol=pickle.HIGHEST_PROTOCOL))
        except ImageError as exc:
            samples.append(pickle.dumps(("error", exc.category, str(exc.args[0]))))
    return {"path": list(batch["path"]), "sample": samples}


# -- the model: one actor per GPU (or per CPU node) -----------------------------------------------


class ModelActor:
    """Holds one loaded task and turns decoded batches into records (Ray Data's callable class).

    The task is planned and loaded by ``engine.start``, on this actor's node and device: a GPU
    actor proves the GPU Ray gave it (``CUDA_VISIBLE_DEVICES``), a CPU actor runs the CPU path on
    the threads of ``config.threads`` (the CPUs it holds). The fault policy (``engine.Recovery``:
    OOM back-off, CPU fallback) lives as long as the actor.
    """

    def __init__(self, config: RunConfig, prepared: bool) -> None:
        _configure(config)
        self.run = engine.start(config, paths=[])
        self.prepared = prepared
        self.recovery = engine.Recovery(self.run.task, self.run.batch_size, auto=self.run.device_choice.auto,
                                        events=self.run.stats.events)
        self.where = f"{socket.gethostname()}/{self.run.device}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        """``{"path", "sample"}`` from ``decode_batch`` → ``{"path", "record" (pickled), "actor"}``."""
        _fault_drill()
        task = self.run.task
        items = [(str(path), self._item(blob)) for path, blob in zip(batch["path"], batch["sample"])]
        records = engine.process_batch(task, items, recovery=self.recovery)
        if self.recovery.device_label:
            self.where = f"{socket.gethostname()}/{self.recovery.device_label}"
        return {"path": [r.path for r in records],
                "record": [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in records],
                "actor": [self.where] * len(records)}

    def _item(self, blob: bytes) -> Sample | ImageError:
        """One decode result back as what ``process_batch`` takes (prepared here if the decode
        step could not)."""
        result = pickle.loads(blob)
        if result[0] == "error":
            return ImageError(result[1], result[2])
        sample = result[1]
        if self.prepared:
            return sample
        try:
            inputs = self.run.task.prepare(sample.decoded.image)
        except Exception as exc:
            return ImageError("preprocess", f"{type(exc).__name__}: {exc}")
        return Sample(replace(sample.decoded, image=None), inputs)


def _fault_drill() -> None:
    """Die here if the ``FAULT_FILE_ENV`` file exists and this process is the one to remove it."""
    path = os.environ.get(FAULT_FILE_ENV)
    if path:
        try:
            os.remove(path)
        except OSError:
            return
        os._exit(1)
