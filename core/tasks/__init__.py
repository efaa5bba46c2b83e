"""Task heads over model values: each task is prepare (per image) → collate → forward → postprocess
(records).

- ``task``: the ``Task`` interface the engine drives, ``pixel_maker``, ``size_dict``.
- ``dual_encoder``: ``DualEncoder``, a contrastive dual encoder as one value (towers, input makers,
  facts; family quirks as data), made from a transformers model (``from_model``) or from the saved
  export of an earlier run (``exports.from_export``, no torch or transformers).
- heads over a ``DualEncoder``: ``embed`` (``EmbedTask``, image embeddings through the embedding
  store: the base operation), ``zero_shot`` (``ZeroShotTask``: a label head), ``search``
  (``SearchTask``: a query head); ``stored``: how they use the embedding store; ``label_setup``:
  labels, prompts, hygiene and records of both classify tasks.
- ``image_classification``: closed-set classifiers (``AutoModelForImageClassification``, own
  ``id2label``).
- ``caption``: captioning with ``generate``; ``caption_families``: how each model family is
  detected, prompted and given a processor.
- ``load``: ``load_task`` / ``load_task_from_export``, the task of a ``RunConfig`` with its model.

Only ``task`` is imported with the package; the others (and torch, transformers where they need
them) on first use of one of their names (``core/lazy.py``).
"""

from ..lazy import lazy_exports
from .task import Task, size_dict

__all__ = ["Task", "size_dict", "DualEncoder", "EmbedTask", "ZeroShotTask", "SearchTask", "check_architecture",
           "ImageClassificationTask", "is_image_classifier", "CaptionTask",
           "CaptionFamily", "FAMILIES", "detect_family", "resolve_prompt", "load_task", "load_task_from_export",
           "store_holds", "stored_caption_task"]

# torch and transformers load with the first of these a run asks for that needs them (core/lazy.py)
__getattr__ = lazy_exports(__name__, {
    "CaptionTask": "caption", "CaptionFamily": "caption_families",
    "FAMILIES": "caption_families", "detect_family": "caption_families", "resolve_prompt": "caption_families",
    "DualEncoder": "dual_encoder", "EmbedTask": "embed", "ZeroShotTask": "zero_shot", "SearchTask": "search",
    "check_architecture": "load", "ImageClassificationTask": "image_classification",
    "is_image_classifier": "image_classification", "load_task": "load", "load_task_from_export": "load",
    "store_holds": "exports", "stored_caption_task": "caption_store"})
