"""The task adapter interface the engine drives.

A task turns a mini-batch of decoded RGB images into result fields in three stages, each a plain
function of the previous stage's output (the shape of transformers' ``Pipeline.preprocess /
_forward / postprocess``, src/transformers/pipelines/base.py):

``preprocess(images) -> inputs`` (CPU tensors) → the engine moves ``inputs`` to the device and
calls ``forward(inputs) -> outputs`` under ``torch.inference_mode()`` and autocast →
``postprocess(outputs) -> list[dict]`` (one dict of task fields per image, in input order).

The engine owns device moves, dtype/autocast, OOM back-off and CPU fallback; a task never does
file I/O or printing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from wwts.core.config import RunConfig
from wwts.core.output import ImageRecord


def size_dict(value: Any) -> dict[str, int]:
    """An image processor's ``size`` / ``crop_size`` (int, dict, or transformers 5's ``SizeDict``,
    which is not a ``dict``) as a plain dict of the keys that are set."""
    if value is None:
        return {}
    if isinstance(value, int):
        return {"height": value, "width": value}
    return {k: v for k, v in dict(value).items() if v is not None}


class Task(ABC):
    """Base class of task adapters.

    Attributes:
        name: task name as on the command line (``"classify"``, ``"caption"``).
        record_type: the ``ImageRecord`` subclass this task fills.
        model: the loaded ``torch.nn.Module`` (eval mode).
        processor: the matching transformers processor.
        device: where ``model`` currently lives.
        dtype: compute dtype (``torch.float32`` means no autocast).
    """

    name: ClassVar[str]
    record_type: ClassVar[type[ImageRecord]]

    def __init__(self, config: RunConfig, model: torch.nn.Module, processor: Any,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.config = config
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype

    @property
    def input_size(self) -> int | None:
        """Side in pixels of the model's square input (e.g. 224), used for draft decoding.

        ``None`` when unknown; the engine then decodes at full resolution.
        """
        return None

    def setup(self) -> None:
        """Work done once per run after the model is on its device (e.g. label text features).

        Called again after the engine moves the task to another device.
        """

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move the model (and anything cached on the device) to ``device``; re-runs ``setup``."""
        self.model.to(device)
        self.device = device
        self.dtype = dtype
        self.setup()

    @abstractmethod
    def preprocess(self, images: list) -> dict[str, torch.Tensor]:
        """``images``: B RGB ``PIL.Image`` objects → CPU tensors, e.g. ``pixel_values (B, 3, H, W)``."""

    #: True when ``preprocess`` may run on one image at a time: the engine then calls it on the
    #: decode threads, in parallel with the model, and joins the results with ``collate``.
    per_image_preprocess: ClassVar[bool] = False

    def int8_modules(self) -> set[str] | None:
        """Submodules ``--quantize int8`` quantizes (``None``: every Linear layer of the model)."""
        return None

    def collate(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Join per-image ``preprocess`` outputs (each with batch dimension 1) into one batch."""
        return {key: torch.cat([item[key] for item in items]) for key in items[0]}

    @abstractmethod
    def forward(self, inputs: dict[str, torch.Tensor]) -> Any:
        """Run the model on ``inputs`` (already on ``self.device``). Called under inference mode."""

    @abstractmethod
    def postprocess(self, outputs: Any) -> list[dict[str, Any]]:
        """Turn ``forward``'s output into B dicts of record fields, in input order."""

    def run_info(self) -> dict[str, Any]:
        """Task settings worth recording in the output's ``run`` section (labels, prompt...)."""
        return {}
