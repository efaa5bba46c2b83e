"""Torch backend: a transformers dual encoder's towers on a torch device.

``TorchTower`` calls the model's ``get_image_features`` or ``get_text_features`` under
``torch.inference_mode()`` and the run's autocast (bf16/fp16; none for float32), then
L2-normalises in float32 outside autocast (CPU autocast would otherwise run the norm in bf16). It
holds no weights of its own: moving the model moves what it runs, and a task rebuilds it after
``to(device, dtype)``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from .. import hardware
from .export import native_image_size
from .tower import l2_normalize, tower_name


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


def tower_features(model: torch.nn.Module, tower: str, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The projected ``(B, D)`` embedding of one tower (not normalised): ``get_image_features``
    of ``pixel_values`` for ``image``, ``get_text_features`` of the token inputs for ``text``.
    ``pixel_values (B, 3, S, S)`` of another side than the model's ``vision_config.image_size``
    (``--image-size``) run with interpolated position embeddings (transformers'
    ``interpolate_pos_encoding``; ``dual_encoder.check_image_size`` refuses the families without)."""
    if tower == "image":
        pixels = inputs["pixel_values"]
        native = native_image_size(model)
        extra = {"interpolate_pos_encoding": True} if native and pixels.shape[-1] != native else {}
        return as_features(model.get_image_features(pixel_values=pixels, **extra))
    return as_features(model.get_text_features(**inputs))



class TorchTower:
    """One tower of a loaded dual encoder on ``device`` under autocast to ``dtype`` (a ``Tower``).

    Args:
        model: a loaded dual encoder (``ChineseCLIPModel``, ``CLIPModel``, ``SiglipModel``...),
            already on ``device``.
        device: where the model lives.
        dtype: compute dtype; ``torch.float32`` runs without autocast (the classify task's text
            tower: the labels are encoded once per run, so full precision costs nothing).
        tower: ``image`` or ``text``.
    """

    backend = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype = torch.float32,
                 tower: str = "image") -> None:
        self.model, self.device, self.dtype, self.tower = model, device, dtype, tower

    @property
    def store_name(self) -> str:
        """``wwts.core.backends.torch.TorchImageEncoder`` / ``...TorchTextEncoder`` (store keys)."""
        return tower_name("torch", self.tower)

    def encode(self, batch: Any) -> torch.Tensor:
        """Image: ``pixel_values (B, 3, H, W)`` float32 (a tensor on ``device``, or a NumPy array
        on the CPU). Text: a tokenizer output (``input_ids (B, T)``...; moved to ``device`` here).
        → ``(B, D)`` float32 tensor, L2-normalised."""
        if self.tower == "image":
            pixels = batch if isinstance(batch, torch.Tensor) else \
                torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            inputs = {"pixel_values": pixels}
        else:
            inputs = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode(), hardware.autocast(self.device, self.dtype):
            return l2_normalize(tower_features(self.model, self.tower, inputs))
