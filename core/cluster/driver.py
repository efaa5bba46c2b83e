"""A run on a Ray cluster, seen from the driver: an ``engine.Runner`` whose distributor is Ray Data.

``start(config)`` discovers the images here (every node must see the same paths: a shared or
NFS folder), connects to the cluster, sizes the actor pool (``connect.plan_layout``) and loads the
task once on a node as an actor would (``workers.probe``: the device, dtype, batch size and task
settings for the output's ``run`` section, and a model-load error as exit 2 before any image).
Iterating the runner then runs the Ray Data pipeline (``ray_batches``): the driver's paths
(``ray.data.from_items``) → ``workers.decode_batch`` as CPU tasks → ``workers.ModelActor`` in an
actor pool → records streamed back (``iter_batches``), deduplicated by ``path``.

Records come in completion order (Ray Data's ``preserve_order`` is off), not discovery order;
each ``path`` appears once.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import uuid
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

from .. import engine, models
from ..config import RunConfig
from ..errors import DeviceError, DeviceFault, ModelLoadError, UsageError, WwtsError, describe
from ..input import IMAGE_EXTENSIONS
from ..output import CaptionResult, ClassifyResult, ImageRecord
from . import workers
from .connect import Layout, connect, import_ray, node_resources, plan_layout

log = logging.getLogger("wwts")

_PROBE_ERRORS = {cls.__name__: cls for cls in (UsageError, ModelLoadError, DeviceError)}


def _worker_config(config: RunConfig, layout: Layout) -> RunConfig:
    """``config`` as the nodes use it: a local model folder as an absolute path (workers do not
    share the driver's working directory) and the actors' thread count."""
    model = config.model
    if model and Path(model).exists():
        model = str(Path(model).absolute())
    return replace(config, model=model, threads=layout.threads, decode_workers=None)


def start(config: RunConfig, *, paths: list[Path] | None = None,
          loading: Callable[[dict[str, Any]], ContextManager[Any]] | None = None) -> engine.Runner:
    """Prepare a run of ``config`` on the Ray cluster at ``config.ray`` (``engine.start``'s twin).

    Args:
        config: the validated run configuration, ``config.ray`` set.
        paths: images to process instead of discovering them (``--resume``).
        loading: as for ``engine.start``: called with the plan, held while the probe loads the model.

    Returns:
        An ``engine.Runner`` ready to iterate (``ray_runner``).

    Raises:
        UsageError: Ray not installed (one line saying what to install), no images, no cluster at
            the address.
        DeviceError: ``--device cuda`` on a cluster without GPUs, or unusable on the probe's node.
        ModelLoadError: the model cannot be loaded on the cluster.
    """
    started = engine.now()
    ray = import_ray()
    if paths is None:
        paths = engine.find_images(config)
        if not paths:
            raise UsageError("no images found in " + ", ".join(str(p) for p in config.inputs)
                             + " (extensions: " + " ".join(sorted(e[1:] for e in IMAGE_EXTENSIONS)) + ")")
    connected = connect(ray, config.ray)
    try:
        layout = plan_layout(config.ray, node_resources(ray), config.device, config.threads)
        worker_config = _worker_config(config, layout)
        plan = {"task": config.task, "images": len(paths),
                "model": models.model_for(config.task, config.lang, config.model), "device": layout.describe(),
                "dtype": config.dtype, "quantize": config.quantize, "threads": layout.threads or "per node",
                "batch_size": config.batch_size or "per device"}
        with loading(plan) if loading is not None else nullcontext():
            probed = _probe(ray, worker_config, layout)
    except BaseException:
        if connected:
            ray.shutdown()
        raise
    return ray_runner(config, paths, layout, worker_config, probed, ray, connected, started)


def _probe(ray: Any, config: RunConfig, layout: Layout) -> dict[str, Any]:
    """``workers.probe`` on a node, with one actor's resources; its warnings logged here.

    Raises:
        UsageError, ModelLoadError, DeviceError: what the probe raised there.
    """
    # a GPU probe's worker exits after it (max_calls=1) and so frees the GPU memory it held; a CPU
    # probe's worker stays, with torch and transformers imported, for the decode tasks
    remote = ray.remote(max_calls=1 if layout.actor_gpus else 0, max_retries=0)(workers.probe)
    remote = remote.options(num_cpus=layout.actor_cpus, num_gpus=layout.actor_gpus)
    probed = ray.get(remote.remote(config))
    for message in probed.get("warnings", []):
        log.warning("%s", message)
    if "error" in probed:
        name, message = probed["error"]
        raise _PROBE_ERRORS.get(name, ModelLoadError)(message)
    return probed


def ray_runner(config: RunConfig, paths: list[Path], layout: Layout, worker_config: RunConfig,
               probed: dict[str, Any], ray: Any, connected: bool, started: str) -> engine.Runner:
    """The ``engine.Runner`` of a run on the cluster: its distributor is the Ray Data pipeline
    (``ray_batches``); ``stats.load_s`` is the probe's model load, ``stats.seconds`` the time from
    the first batch asked for to the last record (actor start-up included), ``stats.device`` the
    layout (``Layout.describe``); the ``run`` section's ``device`` is ``ray: DEVICE`` (the probe's)
    and its ``cluster`` entry the layout and the devices the actors ran on."""
    probe_info = probed["info"]
    actor_devices: set[str] = set()

    def settings() -> dict[str, Any]:
        info = {k: v for k, v in probe_info.items() if k not in _DRIVER_KEYS}
        info.update(device=f"ray: {probe_info['device']}",
                    cluster={**layout.as_dict(), "actor_devices": sorted(actor_devices)})
        return info

    def distribute(runner: engine.Runner) -> Iterator[list[ImageRecord]]:
        return ray_batches(runner, _dataset(ray, runner, worker_config, probed, layout), actor_devices,
                           ray if connected else None)

    return engine.Runner(config, paths, distribute, settings=settings, batch_size=int(probe_info["batch_size"]),
                         load_s=float(probe_info.get("load_s", 0.0)), device=layout.describe(), started=started,
                         threads=probe_info.get("threads"), dtype=str(probe_info["dtype"]))


#: ``run`` section entries the driver knows better than the probe (it ran with no paths).
_DRIVER_KEYS = ("model", "decode_workers", "images", "started", "load_s", "batch_size")


def ray_batches(runner: engine.Runner, dataset: Any, actor_devices: set[str],
                disconnect: Any = None) -> Iterator[list[ImageRecord]]:
    """Yield lists of records as the actors finish them; each path once (``actor_devices`` gets
    where each came from). ``disconnect``: the ``ray`` module to shut down at the end (this run
    connected), or ``None``.

    Raises:
        WwtsError: a wwts error raised on the cluster (e.g. ``DeviceFault``).
        DeviceFault: the cluster failed otherwise; every record finished before has been yielded.
    """
    pending = {str(p): p for p in runner.paths}
    stream = dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
    try:
        for batch in _guarded(stream):
            records = _fresh(batch, pending, actor_devices, runner.stats.events)
            if records:
                yield records
        if pending:
            yield _lost(pending, runner.config.task, runner.stats.events)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        if disconnect is not None:
            disconnect.shutdown()


def _guarded(stream: Iterator[dict]) -> Iterator[dict]:
    """``stream``, with a failure of the cluster raised as the ``WwtsError`` behind it, else as
    ``DeviceFault`` (exit 4: ``--resume`` finishes the run)."""
    try:
        yield from stream
    except Exception as exc:
        cause: BaseException | None = exc
        seen: set[int] = set()
        while cause is not None and id(cause) not in seen:
            if isinstance(cause, WwtsError):
                raise cause from None
            seen.add(id(cause))
            cause = cause.__cause__ or getattr(cause, "cause", None)
        raise DeviceFault(f"the Ray cluster failed mid-run: {describe(exc)}") from None


def _fresh(batch: dict[str, Any], pending: dict[str, Path], actor_devices: set[str],
           events: list[str]) -> list[ImageRecord]:
    """The batch's records whose path is still pending (a retried batch's duplicate is dropped)."""
    records = []
    for path, blob, actor in zip(batch["path"], batch["record"], batch["actor"]):
        actor_devices.add(str(actor))
        if pending.pop(str(path), None) is None:
            event = f"dropped a second record for {path} (a retried batch)"
            log.warning("%s", event)
            events.append(event)
            continue
        records.append(pickle.loads(blob))
    return records


def _lost(pending: dict[str, Path], task: str, events: list[str]) -> list[ImageRecord]:
    """Error records for paths the pipeline ended without (never expected; kept visible)."""
    record_type = ClassifyResult if task == "classify" else CaptionResult
    event = f"{len(pending)} images got no result from the cluster"
    events.append(event)
    log.warning("%s", event)
    records = [record_type(path=p, error="cluster: no result came back for this image") for p in pending]
    pending.clear()
    return records


def _dataset(ray: Any, runner: engine.Runner, worker_config: RunConfig, probed: dict[str, Any],
             layout: Layout) -> Any:
    """The Ray Data pipeline: paths → decode (CPU tasks) → model (actor pool)."""
    data = ray.data
    ctx = data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI draws its own
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = False
    # Ray Data says at INFO/WARNING level that its bars are off and when it finished
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(logging.WARNING)
    rows = [{"path": str(p), "file": os.path.abspath(p)} for p in runner.paths]
    size = runner.batch_size
    ds = data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / size)))
    preparer = probed["preparer"]
    ds = ds.map_batches(workers.decode_batch, batch_size=size, batch_format="numpy", num_cpus=1,
                        fn_kwargs={"config": worker_config, "run_id": uuid.uuid4().hex,
                                   "input_size": probed["input_size"], "preparer": preparer,
                                   "draft_keep": probed.get("draft_keep", 2)})
    actor_config = replace(worker_config, dtype=runner.dtype, batch_size=size)
    # Fault tolerance is Ray Data's default for actor pools (2.60: max_restarts=-1,
    # max_task_retries=-1): an actor that dies is restarted, on another node if its own is
    # gone, and the batches it held are retried; setting these per map_batches is deprecated.
    return ds.map_batches(workers.ModelActor, batch_size=size, batch_format="numpy",
                          fn_constructor_kwargs={"config": actor_config, "prepared": preparer is not None},
                          compute=data.ActorPoolStrategy(size=layout.actors), num_cpus=layout.actor_cpus,
                          num_gpus=layout.actor_gpus or None)
