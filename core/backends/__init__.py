"""Backends: what runs a model's towers on a batch: PyTorch, OpenVINO or ONNX Runtime.

- ``tower``: the ``Tower`` interface a task calls (``encode(batch) → (B, D)``), ``RuntimeTower``
  (a tower on OpenVINO or ONNX Runtime), ``LazyTower`` (a tower made on first use) and
  ``tower_name`` (a tower's name in store keys).
- ``torch``: ``TorchTower``, one tower of a transformers dual encoder (``get_image_features`` /
  ``get_text_features``) on a device, under ``inference_mode`` + autocast.
- ``select``: ``--backend`` names, the ``auto`` rule (``auto_backend``, ``auto_text_backend`` for the
  text tower, ``auto_backends`` for both) and what to install.
- ``devices``: OpenVINO's devices and ONNX Runtime's providers, each request checked or proven.
- ``towers``: a tower as a torch module for the exporters.
- ``openvino`` / ``onnxruntime``: conversion, int8, and the towers on those runtimes.
- ``export``: one artifact per model and runtime in the user cache: the converted towers and the
  facts scoring needs, keyed by the weights' identity (the store's), verified, listed, cleared.
- ``caption_towers`` / ``caption_runtime``: BLIP's vision tower and text decoder (with its key/value
  cache) converted for OpenVINO, saved in the export, and the greedy loop over them.
- ``facts``: what ``wwts doctor`` shows about them (``backend_facts``).
- ``build``: ``plan_backend`` (before the model loads), ``build_towers`` (after), and the
  torch-free start on a saved export (``load_export`` / ``export_towers``, ``save_facts``).

The runtime modules import OpenVINO / ONNX Runtime only when used: importing this package needs
neither.
"""

from ..lazy import lazy_exports
from .tower import LazyTower, RuntimeTower, Tower, l2_normalize, normalized, quantized, tower_name
from .build import build_towers, export_path, export_towers, load_export, model_folder, plan_backend, save_facts
from .export import Conversion, cache_root, clear_conversions, list_conversions
from .facts import backend_facts
from .devices import onnxruntime_providers, openvino_device_names, openvino_devices, resolve_openvino_device
from .select import (BACKENDS, INSTALL, BackendChoice, auto_backend, auto_backends, auto_text_backend, installed,
                     is_x86)

__all__ = [
    "LazyTower", "RuntimeTower", "Tower", "l2_normalize", "normalized", "quantized", "tower_name", "build_towers",
    "export_path", "export_towers", "load_export", "plan_backend", "save_facts", "TorchTower", "as_features",
    "backend_facts", "Conversion", "cache_root", "clear_conversions", "list_conversions", "onnxruntime_providers",
    "openvino_device_names", "openvino_devices", "resolve_openvino_device", "BACKENDS", "INSTALL", "BackendChoice",
    "auto_backend", "auto_backends", "auto_text_backend", "installed", "is_x86", "quantize_static",
    "calibration_arrays", "build_caption_runtime", "model_folder",
]

# the torch tower loads torch with it (core/lazy.py): a run on a saved conversion never asks
__getattr__ = lazy_exports(__name__, {"TorchTower": "torch", "as_features": "torch",
                                      "quantize_static": "openvino", "calibration_arrays": "openvino",
                                      "build_caption_runtime": "caption_runtime"})
