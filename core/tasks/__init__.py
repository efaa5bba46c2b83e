"""Task adapters: each task is prepare (per image) → collate → forward → postprocess (records).

- ``base``: the ``Task`` interface the engine drives, ``size_dict``.
- ``classify``: zero-shot classification with a dual encoder (through ``core.backends``' encoders
  and ``core.store``'s embedding store).
- ``caption``: captioning with ``generate``; ``caption_families``: how each model family is
  detected, prompted and given a processor.
- ``load``: ``load_task``, the adapter for a ``RunConfig``.
"""

from .base import Task, size_dict
from .caption import CaptionBatch, CaptionTask
from .caption_families import FAMILIES, CaptionFamily, detect_family, resolve_prompt
from .classify import ClassifyTask, check_architecture
from .load import load_task

__all__ = ["Task", "size_dict", "ClassifyTask", "check_architecture", "CaptionTask", "CaptionBatch",
           "CaptionFamily", "FAMILIES", "detect_family", "resolve_prompt", "load_task"]
