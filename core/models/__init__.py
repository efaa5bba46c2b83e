"""Models: the default-model registry, the Hugging Face hub (cache, offline mode, mirrors) and loading.

- ``registry``: ``DEFAULT_MODELS`` as data, ``model_for`` (the one resolver of the model a run
  uses), ``parse_model_name`` (hub id or local folder).
- ``hub``: cache folder, cached snapshots, downloads, offline mode and mirror hints, the hub
  reachability check and the cache facts ``wwts doctor`` reports.
- ``loader``: ``load`` / ``load_config`` (``from_pretrained``), ``weights_format``, ``quantize_int8``.
- ``closed_set``: ``ClosedSetModel``, a closed-set classifier read from a folder that is not a
  transformers one (ModelScope's general recognition ResNeSt, seed-style ONNX / TorchScript),
  with ``transforms.ClassifierTransform`` (its pixels) and ``resnest`` (the architecture, torch).
- ``tokenizer``: ``TextTokenizer``, label-prompt token ids with the ``tokenizers`` library alone (no
  torch / transformers import), equal to transformers' tokenizer; ``errors.NotReproducible`` otherwise.
"""

from .hub import (HUB_TIMEOUT_S, LOCAL_COPY_HINT, OFFLINE_HINT, cache_facts, cached_model, cached_snapshot,
                  download, hub_cache_dir, hub_endpoint, hub_hint, hub_offline, hub_status, offline_message,
                  scan_cache)
from .modelscope import hub_choice, modelscope_id, modelscope_snapshot, modelscope_status
from .closed_set import ClosedSetModel, folder_kind, load_closed_set
from .transforms import IMAGENET_MEAN, IMAGENET_STD, ClassifierTransform
from .loader import load, load_config, quantize_int8, resolve, weights_format
from .registry import DEFAULT_MODELS, MODEL_ALIASES, ModelSpec, default_model, model_for, parse_model_name
from .tokenizer import TextTokenizer

__all__ = [
    # registry
    "ModelSpec", "DEFAULT_MODELS", "default_model", "model_for", "parse_model_name",
    # hub
    "HUB_TIMEOUT_S", "LOCAL_COPY_HINT", "OFFLINE_HINT", "hub_hint", "offline_message", "hub_cache_dir",
    "hub_offline", "hub_endpoint", "hub_status", "cached_snapshot", "download", "scan_cache",
    "cached_model", "cache_facts",
    # modelscope
    "hub_choice", "modelscope_id", "modelscope_snapshot", "modelscope_status",
    # loader
    "resolve", "load_config", "weights_format", "load", "quantize_int8",
    # tokenizer
    "TextTokenizer",
    # closed-set classifiers outside transformers (ModelScope's general recognition, ONNX / TorchScript folders)
    "ClosedSetModel", "folder_kind", "load_closed_set", "ClassifierTransform", "IMAGENET_MEAN", "IMAGENET_STD",
    "MODEL_ALIASES",
]
