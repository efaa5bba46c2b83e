"""The driver's side of ``--ray``: import Ray, connect to the cluster, read its resources, size the
actor pool.

Ray is imported here and only when a run asks for it (``import_ray``), so a run without ``--ray``
never loads it. The actor pool follows Ray Data's batch-inference recipe ("one model replica
per GPU", docs.ray.io: Data → Working with PyTorch → Batch inference): one actor per GPU, each
given ``num_gpus=1``; on a cluster without GPUs one actor per node, which leaves a share of each
node's CPUs to the decode tasks.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from ..errors import DeviceError, UsageError, describe

#: What to install when Ray is missing (the ``ray`` extra pulls ``ray[data]``).
INSTALL_HINT = 'pip install "wwts[ray]"'


def import_ray() -> Any:
    """``ray``, with Ray Data importable.

    Raises:
        UsageError: Ray, or one of Ray Data's dependencies (pyarrow, pandas), is not installed; the
            message is one line saying what to install (exit 2).
    """
    try:
        import ray
        import ray.data  # noqa: F401  (pulls pyarrow and pandas: the [data] extra)
    except ImportError as exc:
        raise UsageError(f"--ray needs Ray Data, which is not installed here ({describe(exc)}): "
                         f"{INSTALL_HINT}") from None
    return ray


def connect(ray: Any, address: str) -> bool:
    """Connect this process (the driver) to the Ray cluster at ``address``.

    Args:
        ray: the ``ray`` module.
        address: ``auto`` (the cluster this machine belongs to, or ``RAY_ADDRESS``), ``HOST:PORT``
            of a head node, ``ray://HOST:10001`` (Ray Client), or ``local`` (a one-machine Ray
            started for this run).

    Returns:
        True when this call connected (the caller disconnects at the end); False when the process
        was already connected (e.g. an embedding program's own ``ray.init``).

    Raises:
        UsageError: no cluster answers at ``address`` (exit 2, before any image).
    """
    if ray.is_initialized():
        return False
    # Ray Data's actors take their constructor from the object store, about which Ray's C++ core
    # logs an "E" line per actor (github.com/ray-project/ray/issues/53727) on this terminal; the
    # failures that matter come back as Python exceptions. A user's own level wins.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        # Workers' stdout/stderr stay on their nodes (`ray logs`): the CLI's progress bar owns
        # this terminal; per-image problems come back as error records, and the model's
        # warnings come back from the probe (see `workers.probe`).
        with _core_log_filtered():
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                     configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(f"--ray {address}: cannot connect to a Ray cluster ({describe(exc)}); start one "
                         "with `ray start --head`, or give the head's address (HOST:6379, ray://HOST:10001)") from None
    return True


@contextmanager
def _core_log_filtered() -> Iterator[None]:
    """Hold back, from file descriptor 2, the line Ray's C++ core writes when it reads
    ``RAY_BACKEND_LOG_LEVEL`` ("Set ray log level from environment variable ..."); anything
    else written there in the block is passed on afterwards."""
    try:
        sink = tempfile.TemporaryFile()
        saved = os.dup(2)
    except OSError:  # no file descriptor 2: nothing to filter
        yield
        return
    sys.stderr.flush()
    os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sink.seek(0)
        text = sink.read().decode("utf-8", "replace")
        sink.close()
        kept = [line for line in text.splitlines() if line.strip() and "Set ray log level" not in line]
        if kept:
            sys.stderr.write("\n".join(kept) + "\n")


@dataclass(frozen=True)
class Layout:
    """The cluster and the actor pool a run uses (what the output's ``run.cluster`` records).

    Attributes:
        address: the ``--ray`` address as given.
        nodes: alive nodes.
        cpus, gpus: logical CPUs and GPUs of the alive nodes, summed (Ray's resource counts).
        actors: model actors (replicas) in the pool.
        actor_cpus, actor_gpus: resources each actor holds (``num_cpus``, ``num_gpus``).
        threads: torch threads in each actor (CPU actors: their ``actor_cpus``; ``None``: the
            node's default, for GPU actors).
    """

    address: str
    nodes: int
    cpus: int
    gpus: int
    actors: int
    actor_cpus: int
    actor_gpus: int
    threads: int | None

    def as_dict(self) -> dict[str, Any]:
        """The ``run.cluster`` section."""
        return {"address": self.address, "nodes": self.nodes, "cpus": self.cpus, "gpus": self.gpus,
                "actors": self.actors, "actor_cpus": self.actor_cpus, "actor_gpus": self.actor_gpus}

    def describe(self) -> str:
        """``"Ray 1 node, 2 CPUs, 0 GPUs: 1 cpu actor"`` (the start line's and summary's device)."""
        kind = "gpu" if self.actor_gpus else "cpu"
        return (f"Ray {self.nodes} node{'s' * (self.nodes != 1)}, {self.cpus} CPUs, {self.gpus} GPUs: "
                f"{self.actors} {kind} actor{'s' * (self.actors != 1)}")


def node_resources(ray: Any) -> list[tuple[int, int]]:
    """``(CPUs, GPUs)`` of each alive node, from ``ray.nodes()``."""
    out = []
    for node in ray.nodes():
        if node.get("Alive"):
            res = node.get("Resources", {})
            out.append((int(res.get("CPU", 0)), int(res.get("GPU", 0))))
    return out


def plan_layout(address: str, nodes: list[tuple[int, int]], device: str, threads: int | None) -> Layout:
    """Size the actor pool for ``nodes`` (``(CPUs, GPUs)`` each), leaving CPUs to the decode tasks.

    - GPUs in the cluster and ``--device`` not ``cpu``: one actor per GPU (``num_gpus=1``, and
      ``num_cpus=1`` for its collate and transfers when the cluster has more CPUs than GPUs);
      the other CPUs decode.
    - Otherwise one actor per node that has CPUs. Each holds the smallest node's CPUs less a
      quarter (``--threads`` if given), and always at least one CPU fewer than that node has, so
      decoding never waits for a CPU (on a 2-CPU node: 1 for the model, 1 for decoding). Its
      torch threads are the CPUs it holds (or ``--threads``). The quarter follows the local
      measurement that the image tower is over 90 % of classify's per-image CPU cost
      (DESIGN.md); README "Scale" has the arithmetic for GPUs.

    Raises:
        DeviceError: ``--device cuda`` on a cluster without GPUs.
        UsageError: no alive node with at least 2 CPUs (one for the model, one for decoding).
    """
    gpus = sum(g for _, g in nodes)
    cpus = sum(c for c, _ in nodes)
    if device.startswith("cuda") and gpus == 0:
        raise DeviceError(f"--device {device}: the Ray cluster at {address} has no GPU "
                          f"({len(nodes)} nodes, {cpus} CPUs); use --device auto or cpu")
    if gpus and device != "cpu":
        return Layout(address, len(nodes), cpus, gpus, actors=gpus, actor_cpus=1 if cpus > gpus else 0,
                      actor_gpus=1, threads=threads)
    usable = [c for c, _ in nodes if c >= 2]
    if not usable:
        raise UsageError(f"--ray {address}: no node of the Ray cluster has 2 CPUs (one for the model, one "
                         "for decoding); run without --ray")
    smallest = min(usable)
    held = max(1, min(smallest - 1, threads or smallest - max(1, smallest // 4)))
    return Layout(address, len(nodes), cpus, gpus, actors=len(usable), actor_cpus=held, actor_gpus=0,
                  threads=threads or held)
