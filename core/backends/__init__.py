"""Backends: what runs a model's towers on a batch (today torch; OpenVINO and ONNX Runtime later).

- ``base``: the ``ImageEncoder`` / ``TextEncoder`` interfaces a task calls, and ``l2_normalize``.
- ``torch``: ``TorchImageEncoder`` / ``TorchTextEncoder`` around a transformers dual encoder
  (``get_image_features`` / ``get_text_features``) on a device, under ``inference_mode`` + autocast.
"""

from .base import ImageEncoder, TextEncoder, l2_normalize
from .torch import TorchImageEncoder, TorchTextEncoder, as_features

__all__ = ["ImageEncoder", "TextEncoder", "l2_normalize", "TorchImageEncoder", "TorchTextEncoder", "as_features"]
