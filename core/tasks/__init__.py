"""Task adapters: each task is prepare (per image) → collate → forward → postprocess (records).

- ``base``: the ``Task`` interface the engine drives, ``size_dict``.
- ``zero_shot``: ``ZeroShotTask``, what both zero-shot classify tasks share (labels, label features
  through the store, scoring, records); ``classify``: ``ClassifyTask``, the dual encoder loaded with
  transformers (towers through ``core.backends``' encoders); ``compiled``: ``CompiledClassifyTask``,
  a saved OpenVINO / ONNX Runtime conversion without torch or transformers; ``bundles``: what the
  first saves for the second.
- ``caption``: captioning with ``generate``; ``caption_families``: how each model family is
  detected, prompted and given a processor.
- ``image_classification``: closed-set classifiers (``AutoModelForImageClassification``, own
  ``id2label``); ``label_setup``: the labels, prompts, hygiene and records both classify tasks share.
- ``retrieval``: ``SearchTask`` (``wwts search``) and ``EmbedTask`` (``wwts embed``), the classify
  image path with a similarity or embedding head; ``stored``: how they use the embedding store.
- ``load``: ``load_task``, the adapter for a ``RunConfig``.

Only ``base`` is imported with the package; the others (and torch, transformers) on first use of
one of their names (``core/lazy.py``).
"""

from ..lazy import lazy_exports
from .base import Task, size_dict

__all__ = ["Task", "size_dict", "ClassifyTask", "check_architecture", "ImageClassificationTask",
           "is_image_classifier", "CaptionTask", "CaptionBatch",
           "CaptionFamily", "FAMILIES", "detect_family", "resolve_prompt", "load_task",
           "SearchTask", "EmbedTask", "CompiledClassifyTask", "load_compiled_task"]

# torch and transformers load with the first of these a run asks for (core/lazy.py)
__getattr__ = lazy_exports(__name__, {
    "CaptionTask": "caption", "CaptionBatch": "caption", "CaptionFamily": "caption_families",
    "FAMILIES": "caption_families", "detect_family": "caption_families", "resolve_prompt": "caption_families",
    "ClassifyTask": "classify", "check_architecture": "classify", "ImageClassificationTask": "image_classification",
    "is_image_classifier": "image_classification", "load_task": "load", "SearchTask": "retrieval",
    "EmbedTask": "retrieval", "CompiledClassifyTask": "compiled", "load_compiled_task": "compiled"})
