"""Torch backend: a transformers dual encoder's towers on a torch device.

``TorchImageEncoder`` / ``TorchTextEncoder`` call the model's ``get_image_features`` /
``get_text_features`` under ``torch.inference_mode()`` and the run's autocast (bf16/fp16; none for
float32), then L2-normalise in float32 outside autocast (CPU autocast would otherwise run the norm
in bf16). They hold no weights of their own: moving the model moves what they run, and a task
rebuilds them after ``to(device, dtype)``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .. import hardware
from .base import l2_normalize


def as_features(output: Any) -> torch.Tensor:
    """The projected embedding from ``get_image_features`` / ``get_text_features``.

    transformers 4.x returns a ``(B, D)`` tensor; 5.x returns a ``BaseModelOutputWithPooling``
    whose ``pooler_output`` is the projected ``(B, D)`` embedding.

    Raises:
        TypeError: ``output`` holds no such tensor.
    """
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"cannot find the embedding in a {type(output).__name__}")


class TorchImageEncoder:
    """``model.get_image_features`` on ``device`` under autocast to ``dtype`` (an ``ImageEncoder``).

    Args:
        model: a loaded dual encoder (``ChineseCLIPModel``, ``CLIPModel``, ``SiglipModel``...),
            already on ``device``.
        device: where the model lives.
        dtype: compute dtype; ``torch.float32`` runs without autocast.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values (B, 3, H, W)`` on ``device`` → ``(B, D)`` float32, L2-normalised."""
        with torch.inference_mode(), hardware.autocast(self.device, self.dtype):
            feats = as_features(self.model.get_image_features(pixel_values=pixel_values))
            return l2_normalize(feats)


class TorchTextEncoder:
    """``model.get_text_features`` on ``device`` (a ``TextEncoder``).

    Args:
        model: a loaded dual encoder, already on ``device``.
        device: where the model lives.
        dtype: compute dtype; the classify task passes ``torch.float32`` (the label text is encoded
            once per run, so full precision costs nothing).
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype

    def encode(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Tokenizer output (``input_ids (L, T)``...) → ``(L, D)`` float32, L2-normalised.

        The tensors are moved to ``device`` here.
        """
        inputs = {k: v.to(self.device) for k, v in tokens.items()}
        with torch.inference_mode(), hardware.autocast(self.device, self.dtype):
            feats = as_features(self.model.get_text_features(**inputs))
            return l2_normalize(feats)
