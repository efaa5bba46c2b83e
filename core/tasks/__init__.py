"""Task adapters: each task is prepare (per image) → collate → forward → postprocess (records).

- ``base``: the ``Task`` interface the engine drives, ``size_dict``.
- ``classify``: zero-shot classification with a dual encoder (through ``core.backends``' encoders
  and ``core.store``'s embedding store).
- ``caption``: captioning with ``generate``; ``caption_families``: how each model family is
  detected, prompted and given a processor.
- ``image_classification``: closed-set classifiers (``AutoModelForImageClassification``, own
  ``id2label``); ``label_setup``: the labels, prompts, hygiene and records both classify tasks share.
- ``retrieval``: ``SearchTask`` (``wwts search``) and ``EmbedTask`` (``wwts embed``), the classify
  image path with a similarity or embedding head; ``stored``: how they use the embedding store.
- ``load``: ``load_task``, the adapter for a ``RunConfig``.
"""

from .base import Task, size_dict
from .caption import CaptionBatch, CaptionTask
from .caption_families import FAMILIES, CaptionFamily, detect_family, resolve_prompt
from .classify import ClassifyTask, check_architecture
from .image_classification import ImageClassificationTask, is_image_classifier
from .load import load_task
from .retrieval import EmbedTask, SearchTask

__all__ = ["Task", "size_dict", "ClassifyTask", "check_architecture", "ImageClassificationTask",
           "is_image_classifier", "CaptionTask", "CaptionBatch",
           "CaptionFamily", "FAMILIES", "detect_family", "resolve_prompt", "load_task",
           "SearchTask", "EmbedTask"]
