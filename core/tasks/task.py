"""The task adapter interface the engine drives.

A task turns images into records in four stages, each a plain function of the previous stage's
output (the shape of transformers' ``Pipeline.preprocess / _forward / postprocess``,
src/transformers/pipelines/base.py, with preprocessing split at the image boundary):

``prepare(image) -> item`` runs per image on the decode threads, in parallel with the model →
``collate(items) -> inputs`` joins a mini-batch into CPU tensors → the engine moves ``inputs`` to
the device and calls ``forward(inputs) -> outputs`` under ``torch.inference_mode()`` and autocast →
``postprocess(outputs, bases) -> records`` completes the engine's base records (path, size,
frames, note already set) with the task's fields, or with an error for a row that cannot be
trusted.

The engine owns device moves, dtype/autocast, OOM back-off and CPU fallback; a task never does
file I/O or printing.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from ..config import RunConfig
from ..errors import NotReproducible, UsageError
from ..input import EXACT_DRAFT_KEEP, ImagePreprocessor
from ..output import ImageRecord

if TYPE_CHECKING:  # a torch-free run (OpenVINO, ONNX Runtime) imports this module too
    import torch


def pixel_maker(image_processor: Any, *, fast: bool = False, image_size: int | None = None) -> Callable[[Any], Any]:
    """One RGB image → ``pixel_values (1, 3, S, S)`` float32 torch tensor, for a model loaded with
    transformers: wwts' ``core.input.ImagePreprocessor`` (Pillow + NumPy, bit-equal to
    transformers' processors for the families it reproduces: tests/test_preprocess.py; with
    ``fast``, its fast resize; ``image_size``: another input side S), the one path every backend
    uses; transformers' ``image_processor`` itself for the settings and families it refuses
    (``errors.NotReproducible``). The callable pickles (a Ray decode task runs it).

    Raises:
        UsageError: ``image_size`` with an image processor ``ImagePreprocessor`` refuses."""
    try:
        preprocessor = ImagePreprocessor.from_config(image_processor.to_dict(), fast=fast, image_size=image_size)
    except (NotReproducible, AttributeError, KeyError, TypeError, ValueError) as exc:
        if image_size:
            raise UsageError(f"--image-size: this model's image processor is not one wwts resizes ({exc})") from None
        return functools.partial(_processor_pixels, image_processor)
    return functools.partial(_preprocessor_pixels, preprocessor)


def _preprocessor_pixels(preprocessor: ImagePreprocessor, image: Any) -> Any:
    import torch

    return torch.from_numpy(preprocessor(image))


def _processor_pixels(image_processor: Any, image: Any) -> Any:
    return image_processor(images=[image], return_tensors="pt")["pixel_values"]


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

    @property
    def draft_keep(self) -> int:
        """The decode pool's ``draft_keep`` (``input.load_image``): the short side JPEG drafts keep,
        in multiples of ``input_size``. 2, the margin transformers' full resize needs; a head whose
        pixels use the fast resize (``ImagePreprocessor(fast=True)``) says 1."""
        return EXACT_DRAFT_KEEP

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

    def int8_modules(self) -> set[str] | None:
        """Submodules ``--quantize int8`` quantizes (``None``: every Linear layer of the model)."""
        return None

    @abstractmethod
    def prepare(self, image: Any) -> Any:
        """One RGB ``PIL.Image`` → what ``collate`` takes for it. Runs on a decode thread (no
        device work, no shared mutable state); an exception becomes that image's
        ``preprocess`` error."""

    @abstractmethod
    def collate(self, items: list[Any]) -> dict[str, torch.Tensor]:
        """B ``prepare`` results → CPU model inputs, e.g. ``pixel_values (B, 3, H, W)``."""

    @abstractmethod
    def forward(self, inputs: dict[str, torch.Tensor]) -> Any:
        """Run the model on ``inputs`` (already on ``self.device``). Called under inference mode."""

    @abstractmethod
    def postprocess(self, outputs: Any, bases: list[ImageRecord]) -> list[ImageRecord]:
        """``forward``'s output for B images → B completed records, in input order.

        ``bases`` are ``record_type`` records holding path, width, height, frames and note; each
        result is a copy (``dataclasses.replace``) with the task's fields set, or with ``error``
        set for a row that cannot be trusted (e.g. non-finite scores).
        """

    def run_info(self) -> dict[str, Any]:
        """Task settings worth recording in the output's ``run`` section (labels, prompt...)."""
        return {}
