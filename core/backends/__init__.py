"""Backends: what runs a model's towers on a batch: PyTorch, OpenVINO or ONNX Runtime.

- ``base``: the ``ImageEncoder`` / ``TextEncoder`` interfaces a task calls, and ``l2_normalize``.
- ``torch``: ``TorchImageEncoder`` / ``TorchTextEncoder`` around a transformers dual encoder
  (``get_image_features`` / ``get_text_features``) on a device, under ``inference_mode`` + autocast.
- ``select``: ``--backend`` names, the ``auto`` rule (``auto_backend``, ``auto_text_backend`` for the
  text tower, ``auto_backends`` for both) and what to install.
- ``devices``: OpenVINO's devices and ONNX Runtime's providers, each request checked or proven.
- ``towers``: each tower as a torch module for the exporters.
- ``openvino`` / ``onnxruntime``: conversion (cached), int8, and the encoders on those runtimes.
- ``cache``: the conversion cache in the user cache folder (keyed, verified, listed, cleared).
- ``facts``: what ``wwts doctor`` shows about them (``backend_facts``).
- ``build``: ``plan_backend`` (before the model loads) and ``build_encoders`` (after).
- ``bundle``: what a later run needs to use the conversions without torch or transformers
  (``write_bundle`` / ``load_bundle`` / ``bundle_encoders``).

The runtime modules import OpenVINO / ONNX Runtime only when used: importing this package needs
neither.
"""

from ..lazy import lazy_exports
from .base import Deferred, ImageEncoder, TextEncoder, l2_normalize, normalized
from .build import build_encoders, identity_of, model_identity, plan_backend
from .bundle import bundle_encoders, bundle_path, load_bundle, write_bundle
from .cache import Conversion, cache_root, clear_conversions, list_conversions
from .facts import backend_facts
from .devices import onnxruntime_providers, openvino_device_names, openvino_devices, resolve_openvino_device
from .select import (BACKENDS, INSTALL, BackendChoice, auto_backend, auto_backends, auto_text_backend, installed,
                     is_x86)

__all__ = [
    "Deferred", "ImageEncoder", "TextEncoder", "l2_normalize", "normalized", "identity_of", "bundle_encoders",
    "bundle_path", "load_bundle", "write_bundle", "TorchImageEncoder", "TorchTextEncoder", "as_features",
    "backend_facts", "build_encoders", "model_identity", "plan_backend", "Conversion", "cache_root", "clear_conversions",
    "list_conversions", "onnxruntime_providers", "openvino_device_names", "openvino_devices",
    "resolve_openvino_device", "BACKENDS", "INSTALL", "BackendChoice", "auto_backend", "auto_backends",
    "auto_text_backend", "installed", "is_x86",
]

# the torch encoders load torch with them (core/lazy.py): a run on a saved conversion never asks
__getattr__ = lazy_exports(__name__, {"TorchImageEncoder": "torch", "TorchTextEncoder": "torch",
                                      "as_features": "torch"})
