"""A run on a Ray cluster, seen from the driver: the same interface as ``core.engine.Run``.

``start(config)`` discovers the images here (every node must see the same paths: a shared or
NFS folder), connects to the cluster, sizes the actor pool (``connect.plan_layout``) and loads the
task once on a node as an actor would (``workers.probe``: the device, dtype, batch size and task
settings for the output's ``run`` section, and a model-load error as exit 2 before any image).
``ClusterRun.batches()`` then runs the Ray Data pipeline: the driver's paths
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
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

from .. import engine, models
from ..config import RunConfig
from ..errors import DeviceError, ModelLoadError, UsageError, WwtsError, describe
from ..input import IMAGE_EXTENSIONS
from ..output import CaptionResult, ClassifyResult, ImageRecord
from . import workers
from .connect import Layout, connect, import_ray, node_resources, plan_layout

log = logging.getLogger("wwts")

_PROBE_ERRORS = {cls.__name__: cls for cls in (UsageError, ModelLoadError, DeviceError)}


class ClusterFault(WwtsError):
    """The Ray cluster failed mid-run (a batch kept killing its actor, the head went away...).

    Records finished before it have been yielded; exit code 4, like a device fault, and
    ``--resume`` finishes the run.
    """

    exit_code = 4


def _worker_config(config: RunConfig, layout: Layout) -> RunConfig:
    """``config`` as the nodes use it: a local model folder as an absolute path (workers do not
    share the driver's working directory) and the actors' thread count."""
    model = config.model
    if model and Path(model).exists():
        model = str(Path(model).absolute())
    return replace(config, model=model, threads=layout.threads, decode_workers=None)


def start(config: RunConfig, *, paths: list[Path] | None = None,
          loading: Callable[[dict[str, Any]], ContextManager[Any]] | None = None) -> "ClusterRun":
    """Prepare a run of ``config`` on the Ray cluster at ``config.ray`` (``engine.start``'s twin).

    Args:
        config: the validated run configuration, ``config.ray`` set.
        paths: images to process instead of discovering them (``--resume``).
        loading: as for ``engine.start``: called with the plan, held while the probe loads the model.

    Returns:
        A ``ClusterRun`` ready to iterate.

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
        with loading(plan) if loading is not None else _nothing():
            probed = _probe(ray, worker_config, layout)
    except BaseException:
        if connected:
            ray.shutdown()
        raise
    return ClusterRun(config, paths, layout, worker_config, probed, ray, connected, started)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


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


class ClusterRun(engine.BatchRun):
    """One prepared run on a Ray cluster; iterate ``batches()`` for records (completion order).

    The CLI drives it exactly like ``core.engine.Run``: ``total``, ``info()``, ``stats``,
    ``batches()``, ``stop()``, ``device``, ``dtype``.

    Attributes:
        config: the ``RunConfig`` as the user gave it.
        paths: the images to process (each gets exactly one record).
        layout: the cluster and actor pool (``connect.Layout``).
        stats: ``engine.RunStats``; ``load_s`` is the probe's model load, ``seconds`` the time
            from the first batch asked for to the last record (actor start-up included).
    """

    def __init__(self, config: RunConfig, paths: list[Path], layout: Layout, worker_config: RunConfig,
                 probed: dict[str, Any], ray: Any, connected: bool, started: str) -> None:
        self.config = config
        self.paths = paths
        self.layout = layout
        self.started = started
        self._worker_config = worker_config
        self._probed = probed
        self._ray = ray
        self._connected = connected
        self._stop = False
        self._actor_devices: set[str] = set()
        self._first_s: float | None = None
        self.batch_size = int(probed["info"]["batch_size"])
        self.stats = engine.RunStats(load_s=float(probed["info"].get("load_s", 0.0)), batch_size=self.batch_size,
                                     device=layout.describe())

    @property
    def device(self) -> str:
        """The actors' device as the probe found it (``cuda:0``, ``cpu``)."""
        return str(self._probed["info"]["device"])

    @property
    def dtype(self) -> str:
        """The compute dtype every actor uses (the probe's choice, e.g. ``float32``)."""
        return str(self._probed["info"]["dtype"])

    def info(self) -> dict[str, Any]:
        """The ``run`` section: the probe's plan and task settings (as ``Run.info()``), the driver's
        model name, the cluster (``cluster``: address, nodes, CPUs, GPUs, actors, the devices the
        actors ran on, ``first_batch_s``: seconds to the first records, actor start-up and model
        load included), and images/s once records came (start-up included)."""
        info = {k: v for k, v in self._probed["info"].items() if k not in ("decode_workers", "images", "load_s")}
        info.update(model=models.model_for(self.config.task, self.config.lang, self.config.model),
                    device=f"ray: {self.device}", images=self.total, started=self.started,
                    load_s=round(self.stats.load_s, 3), batch_size=self.batch_size)
        info["cluster"] = {**self.layout.as_dict(), "actor_devices": sorted(self._actor_devices)}
        if self._first_s is not None:
            info["cluster"]["first_batch_s"] = round(self._first_s, 3)
        if self.stats.seconds:
            info.update(seconds=round(self.stats.seconds, 3), images_per_s=round(self.stats.images_per_s, 3),
                        errors=self.stats.errors, finished=engine.now())
        if self.stats.events:
            info["events"] = list(self.stats.events)
        return info

    def batches(self) -> Iterator[list[ImageRecord]]:
        """Yield lists of records as the actors finish them; each path once.

        Raises:
            WwtsError: a wwts error raised on the cluster (e.g. ``DeviceFault``).
            ClusterFault: the cluster failed otherwise; every record finished before has been yielded.
        """
        t0 = time.perf_counter()
        pending = {str(p): p for p in self.paths}
        stream = self._dataset().iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
        try:
            for batch in self._guarded(stream):
                records = self._fresh(batch, pending)
                if self._first_s is None:
                    self._first_s = time.perf_counter() - t0  # actors started, model loaded, first batch
                self.stats.images += len(records)
                self.stats.errors += sum(1 for r in records if r.error)
                self.stats.seconds = time.perf_counter() - t0
                if records:
                    yield records
                if self._stop:
                    break
            if pending and not self._stop:
                yield self._lost(pending)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
            self.stats.seconds = time.perf_counter() - t0
            if self._connected:
                self._ray.shutdown()
                self._connected = False

    def _guarded(self, stream: Iterator[dict]) -> Iterator[dict]:
        """``stream``, with a failure of the cluster raised as the ``WwtsError`` behind it, else
        as ``ClusterFault``."""
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
            raise ClusterFault(f"the Ray cluster failed mid-run: {describe(exc)}") from None

    def _fresh(self, batch: dict[str, Any], pending: dict[str, Path]) -> list[ImageRecord]:
        """The batch's records whose path is still pending (a retried batch's duplicate is dropped)."""
        records = []
        for path, blob, actor in zip(batch["path"], batch["record"], batch["actor"]):
            self._actor_devices.add(str(actor))
            if pending.pop(str(path), None) is None:
                event = f"dropped a second record for {path} (a retried batch)"
                log.warning("%s", event)
                self.stats.events.append(event)
                continue
            records.append(pickle.loads(blob))
        return records

    def _lost(self, pending: dict[str, Path]) -> list[ImageRecord]:
        """Error records for paths the pipeline ended without (never expected; kept visible)."""
        record_type = ClassifyResult if self.config.task == "classify" else CaptionResult
        event = f"{len(pending)} images got no result from the cluster"
        self.stats.events.append(event)
        log.warning("%s", event)
        records = [record_type(path=p, error="cluster: no result came back for this image") for p in pending]
        self.stats.images += len(records)
        self.stats.errors += len(records)
        pending.clear()
        return records

    def _dataset(self) -> Any:
        """The Ray Data pipeline: paths → decode (CPU tasks) → model (actor pool)."""
        data = self._ray.data
        ctx = data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the CLI draws its own
        ctx.print_on_execution_start = False
        ctx.execution_options.preserve_order = False
        # Ray Data says at INFO/WARNING level that its bars are off and when it finished
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(logging.WARNING)
        rows = [{"path": str(p), "file": os.path.abspath(p)} for p in self.paths]
        size = self.batch_size
        ds = data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / size)))
        preparer = self._probed["preparer"]
        ds = ds.map_batches(workers.decode_batch, batch_size=size, batch_format="numpy", num_cpus=1,
                            fn_kwargs={"config": self._worker_config, "run_id": uuid.uuid4().hex,
                                       "input_size": self._probed["input_size"], "preparer": preparer})
        layout = self.layout
        actor_config = replace(self._worker_config, dtype=self.dtype, batch_size=self.batch_size)
        # Fault tolerance is Ray Data's default for actor pools (2.60: max_restarts=-1,
        # max_task_retries=-1): an actor that dies is restarted, on another node if its own is
        # gone, and the batches it held are retried; setting these per map_batches is deprecated.
        return ds.map_batches(workers.ModelActor, batch_size=size, batch_format="numpy",
                              fn_constructor_kwargs={"config": actor_config, "prepared": preparer is not None},
                              compute=data.ActorPoolStrategy(size=layout.actors), num_cpus=layout.actor_cpus,
                              num_gpus=layout.actor_gpus or None)
