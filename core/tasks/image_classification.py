"""Closed-set image classification: a model transformers loads as ``AutoModelForImageClassification``
(ViT, ConvNeXt, Swin, EfficientNet... fine-tuned on a fixed label set) scores its own classes.

The labels are the model's ``config.id2label`` (``--label-map FILE.json`` shows them under other
names, e.g. in Chinese); ``--labels`` and ``--vocab`` do not apply. Scores follow the checkpoint's
training objective as transformers names it in ``config.problem_type``: a softmax over the classes
(``single_label_classification``, the default), or a sigmoid per class
(``multi_label_classification``). ``--multi-label --threshold T`` lists every class whose score
is >= T; ``--min-score`` abstains as in zero-shot runs.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import models
from ..config import RunConfig
from ..errors import UsageError
from ..labels import apply_label_map, text_issues
from ..output import ClassifyResult
from .task import Task, pixel_maker, size_dict
from .label_setup import build_records, label_run_info, report_issues


def is_image_classifier(model_config: Any) -> bool:
    """True when ``config.architectures`` names a transformers ``...ForImageClassification`` class
    (read before any weights, by ``load.load_task``)."""
    return any(str(arch).endswith("ForImageClassification")
               for arch in getattr(model_config, "architectures", None) or [])


class ImageClassificationTask(Task):
    """A closed-set classifier on the classify engine.

    ``prepare``: one image → ``pixel_values (1, 3, H, W)`` float32 (the model's image processor).
    ``collate``: → ``{"pixel_values": (B, 3, H, W)}``.
    ``forward``: → ``(B, C)`` float32 scores over the C classes (softmax, or sigmoid for a
    ``multi_label_classification`` model).
    ``postprocess``: → B records (``label``, ``score``, ``top_k``, ``labels``).

    Attributes:
        labels: the C class names as written in the records (``id2label`` order, mapped).
    """

    name = "classify"
    record_type = ClassifyResult

    def __init__(self, config: RunConfig, model: torch.nn.Module, processor: Any,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(config, model, processor, device, dtype)
        id2label = model.config.id2label
        names = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(model.config.num_labels)]
        self.labels = apply_label_map(names, config.label_map)
        self.top_k = min(config.top_k, len(self.labels))
        self.sigmoid = getattr(model.config, "problem_type", None) == "multi_label_classification"
        self._pixels = pixel_maker(self.image_processor)

    @property
    def image_processor(self) -> Any:
        """The processor's image part (the processor itself when it is an image processor)."""
        return getattr(self.processor, "image_processor", self.processor)

    @property
    def input_size(self) -> int | None:
        """Side in pixels of the model's input (crop size, else size), for draft decoding."""
        for attr in ("crop_size", "size"):
            size = size_dict(getattr(self.image_processor, attr, None))
            for key in ("height", "shortest_edge"):
                if size.get(key):
                    return int(size[key])
        return None

    def prepare(self, image: Any) -> torch.Tensor:
        """One RGB image → ``pixel_values (1, 3, H, W)`` float32."""
        return self._pixels(image)

    def collate(self, items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """B ``(1, 3, H, W)`` tensors → ``{"pixel_values": (B, 3, H, W)}``."""
        return {"pixel_values": torch.cat(items)}

    def forward(self, inputs: dict[str, Any]) -> torch.Tensor:
        """``pixel_values (B, 3, H, W)`` → ``(B, C)`` float32 scores (softmax over the classes, in
        float32 outside autocast; sigmoid per class for a multi-label checkpoint)."""
        logits = self.model(pixel_values=inputs["pixel_values"]).logits
        with torch.autocast(device_type=self.device.type, enabled=False):
            logits = logits.float()
            return logits.sigmoid() if self.sigmoid else logits.softmax(dim=-1)

    def postprocess(self, outputs: torch.Tensor, bases: list[ClassifyResult]) -> list[ClassifyResult]:
        """``(B, C)`` scores → B records (non-finite rows become ``nonfinite`` error records)."""
        hint = "" if self.dtype == torch.float32 else "; try --dtype float32"
        return build_records(outputs, bases, self.labels, self.top_k, self.config,
                             f"nonfinite: the model gave NaN or infinite scores for this image{hint}")

    def run_info(self) -> dict[str, Any]:
        """``labels`` (the model's classes, mapped), ``top_k`` and the multi-label / abstain settings."""
        info = label_run_info(self.config, self.labels, self.top_k)
        info.update(prompt=None, vocab=None, closed_set=True)
        return info


def load_image_classifier(config: RunConfig, name: str, device: torch.device,
                          dtype: torch.dtype) -> ImageClassificationTask:
    """Load ``name`` with ``AutoModelForImageClassification`` and its image processor.

    Raises:
        UsageError: ``--labels``, ``--labels-file``, ``--vocab``, ``--prompt`` or ``--prompts``
            given (a closed-set model has its own labels and no text tower), or, with
            ``--strict-labels``, two classes shown under the same name.
        ModelLoadError: the model cannot be loaded.
    """
    if config.labels or config.vocab or config.templates is not None:
        raise UsageError(f"model {name!r} is a closed-set image classifier with its own labels (id2label): "
                         "--labels, --labels-file, --vocab, --prompt and --prompts do not apply "
                         "(use --label-map FILE.json to rename its labels)")
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model, processor = models.load(name, model_class=AutoModelForImageClassification,
                                   processor_class=AutoImageProcessor,
                                   trust_remote_code=config.trust_remote_code, model_kwargs={"dtype": torch.float32})
    task = ImageClassificationTask(config, model, processor, device, dtype)
    if config.label_map:
        report_issues([i for i in text_issues(task.labels) if i.kind == "same"], config.strict_labels)
    return task
