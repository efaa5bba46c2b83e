"""The batching engine: plan a run, run it, recover from device faults.

- ``plan``: ``start(config)`` (what a run will do: images, device, threads, dtype, batch size,
  the loaded task), ``find_images``.
- ``runner``: ``Runner``, one prepared run whoever computes its records (``info()``, the record
  count in ``RunStats``, ``stop()``), and its distributor interface.
- ``local``: the local distributor, the batch loop over the decode pool (``local_runner``).
- ``batch``: ``process_batch(task, items)``, decoded images in, records out (what a Ray Data
  actor would call).
- ``recovery``: ``Recovery``, OOM back-off, MPS fallback, poisoned CUDA → ``DeviceFault``.
- ``store_lookup``: the embedding store's plumbing: the task's store, the decode pool's lookup (an image
  whose embedding is stored is not decoded), sizes and notes remembered with new embeddings.

``load_task`` is ``core.tasks.load_task``, re-exported because the engine's users call it.
"""

from .batch import Item, process_batch
from .plan import find_images, load_task, start
from .recovery import Recovery
from .runner import Distributor, Runner, RunStats, now

__all__ = ["start", "find_images", "load_task", "Runner", "RunStats", "Distributor", "now", "process_batch", "Item", "Recovery"]
