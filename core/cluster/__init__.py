"""Runs on a Ray cluster (``--ray ADDRESS|auto``): the batch function on Ray Data.

The same classify and caption as ``core.engine``, split the way Ray Data is used for batch
inference: the driver discovers the paths, CPU tasks decode and prepare the images, an actor pool
(one actor per GPU, or per CPU node) runs ``engine.process_batch``, and the records stream back
to the driver, which writes them as a local run does.

- ``connect``: ``import_ray`` (one line saying what to install when Ray is missing), ``connect``,
  the cluster's resources and the actor pool's size (``plan_layout``, ``Layout``).
- ``workers``: what runs on the nodes: ``probe``, ``decode_batch``, ``ModelActor``.
- ``driver``: ``start(config)``, the driver's side: an ``engine.Runner`` whose distributor is the
  Ray Data pipeline (``ray_batches``); a cluster that fails mid-run is a ``DeviceFault`` (exit 4).

Importing this package does not import Ray: ``start`` does (``import_ray``).

The package sits above ``engine`` (it calls ``engine.start`` and ``engine.process_batch`` on the
nodes) and below ``cli``.
"""

from .connect import INSTALL_HINT, Layout, import_ray, plan_layout
from .driver import start
from .workers import FAULT_FILE_ENV

__all__ = ["start", "Layout", "plan_layout", "import_ray", "INSTALL_HINT",
           "FAULT_FILE_ENV"]
