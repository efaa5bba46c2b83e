"""Closed-set image classification: a model with its own fixed label set scores its own classes.

The model is a ``models.ClosedSetModel``: the C class names, the image transform and the logits
``(B, 3, S, S) → (B, C)``. It comes from a transformers ``...ForImageClassification`` checkpoint
(ViT, ConvNeXt, EfficientNet...: labels from ``config.id2label``, scores by ``config.problem_type``:
softmax, or sigmoid for ``multi_label_classification``), from ModelScope's general recognition
model (万物识别, ResNeSt-101 over 54,092 Chinese labels), or from a seed-style folder
(``model.onnx`` or TorchScript ``model.pt`` + labels + ``preprocessor_config.json``), see
``models/closed_set.py``.

- ``--labels A,B`` restricts the answer to those classes: the softmax is taken over their logits
  alone. A name the model does not have is refused with the closest names it has.
- A name that occurs more than once in the model's label list is reported once, its
  probabilities summed (the run section says how many names that concerns).
- ``--label-map FILE.json`` shows the labels under other names; ``--vocab`` and prompts do not apply.
- ``--multi-label --threshold T`` lists every class whose score is >= T; ``--min-score`` abstains.
"""

from __future__ import annotations

import difflib
from typing import Any

import numpy as np
import torch

from .. import models
from ..config import RunConfig
from ..errors import UsageError
from ..labels import LabelIssue, apply_label_map, text_issues
from ..output import ClassifyResult
from .task import Task, pixel_maker, size_dict
from .label_setup import build_records, label_run_info, report_issues
from .classifier_runtime import runtime_logits


#: Label count up to which ``--label-map`` collisions are found with ``labels.text_issues``.
HYGIENE_MAX = 5000


def is_image_classifier(model_config: Any) -> bool:
    """True when ``config.architectures`` names a transformers ``...ForImageClassification`` class
    (read before any weights, by ``load.load_task``)."""
    return any(str(arch).endswith("ForImageClassification")
               for arch in getattr(model_config, "architectures", None) or [])


class ImageClassificationTask(Task):
    """A closed-set classifier on the classify engine.

    ``prepare``: one image → ``pixel_values (1, 3, S, S)`` float32 (the model's transform).
    ``collate``: → ``{"pixel_values": (B, 3, S, S)}``.
    ``forward``: → ``(B, G)`` float32 scores over the G distinct names answered (softmax over the
    classes, or over the ``--labels`` subset; sigmoid for a multi-label model), duplicates summed.
    ``postprocess``: → B records (``label``, ``score``, ``top_k``, ``labels``).

    Attributes:
        classifier: the ``models.ClosedSetModel``.
        labels: the G names as written in the records (mapped by ``--label-map``).
        classes: ``(K,)`` class indices scored (all C, or the ``--labels`` subset's).
        groups: ``(K,)`` the name (0..G-1) each scored class counts for.
        duplicates: how many names occur more than once among the scored classes.
    """

    name = "classify"
    record_type = ClassifyResult
    #: The run's ``backends.BackendChoice`` (set by the plan before ``to``); ``None``: torch.
    backend: Any = None

    def __init__(self, config: RunConfig, classifier: models.ClosedSetModel, device: torch.device,
                 dtype: torch.dtype) -> None:
        super().__init__(config, classifier.module, None, device, dtype)
        self.classifier = classifier
        self.classes = select_classes(classifier.labels, config.labels)
        names = [classifier.labels[i] for i in self.classes.tolist()]
        group_of: dict[str, int] = {}
        self.groups = torch.tensor([group_of.setdefault(n, len(group_of)) for n in names], dtype=torch.long)
        counts = torch.bincount(self.groups, minlength=len(group_of))
        self.duplicates = int((counts > 1).sum())
        self.labels = apply_label_map(list(group_of), config.label_map)
        self.top_k = min(config.top_k, len(self.labels))
        self._pixels = classifier.transform
        self._runtime: Any = None
        self._where: str | None = None

    @property
    def input_size(self) -> int | None:
        """Side in pixels the decoder may reduce photos to (the resize side), for draft decoding."""
        return self.classifier.draft_size

    def setup(self) -> None:
        """Open the runtime the backend names, once (``classifier_runtime.runtime_logits``: an ONNX
        folder on OpenVINO or ONNX Runtime, a torch module converted for them and cached)."""
        if self._runtime is None and self._where is None:
            self._runtime, self._where = runtime_logits(self.classifier, self.backend)

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move the torch module (a runtime's model stays on the CPU)."""
        if self.model is not None:
            self.model.to(device)
        self.device, self.dtype = device, dtype
        self.setup()

    def prepare(self, image: Any) -> torch.Tensor:
        """One RGB image → ``pixel_values (1, 3, S, S)`` float32."""
        pixels = self._pixels(image)
        return pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(pixels)

    def collate(self, items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """B ``(1, 3, S, S)`` tensors → ``{"pixel_values": (B, 3, S, S)}``."""
        return {"pixel_values": torch.cat(items)}

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` → ``(B, C)`` logits over all the model's classes."""
        if self._runtime is not None:
            return torch.from_numpy(self._runtime(np.ascontiguousarray(pixel_values.detach().float().cpu().numpy())))
        out = self.model(pixel_values)
        return getattr(out, "logits", out)

    def forward(self, inputs: dict[str, Any]) -> torch.Tensor:
        """``pixel_values (B, 3, S, S)`` → ``(B, G)`` float32 scores (see the class docstring),
        computed in float32 outside autocast."""
        logits = self.logits(inputs["pixel_values"])
        with torch.autocast(device_type=self.device.type, enabled=False):
            logits = logits.float()[:, self.classes.to(logits.device)]
            scores = logits.sigmoid() if self.classifier.sigmoid else logits.softmax(dim=-1)
            if len(self.labels) == scores.shape[1]:
                return scores
            merged = torch.zeros(scores.shape[0], len(self.labels), dtype=scores.dtype, device=scores.device)
            return merged.index_add_(1, self.groups.to(scores.device), scores)

    def postprocess(self, outputs: torch.Tensor, bases: list[ClassifyResult]) -> list[ClassifyResult]:
        """``(B, G)`` scores → B records (non-finite rows become ``nonfinite`` error records)."""
        hint = "" if self.dtype == torch.float32 else "; try --dtype float32"
        return build_records(outputs, bases, self.labels, self.top_k, self.config,
                             f"nonfinite: the model gave NaN or infinite scores for this image{hint}")

    def run_info(self) -> dict[str, Any]:
        """``labels`` (the names answered, mapped), ``top_k``, the multi-label / abstain settings,
        and, when the model's label list repeats names, ``duplicate_labels``."""
        info = label_run_info(self.config, self.labels, self.top_k)
        info.update(prompt=None, vocab=None, closed_set=True, computed_by=self._where)
        if self.duplicates:
            info["duplicate_labels"] = (f"{self.duplicates} names occur more than once in the model's label list: "
                                        "each is reported once, its probabilities summed")
        return info


def select_classes(names: list[str], wanted: Any) -> torch.Tensor:
    """``(K,)`` indices of the classes scored: all of them, or those named in ``wanted``
    (``--labels``; every class of a repeated name), in ``wanted``'s order.

    Raises:
        UsageError: a name the model does not have (the message names it and the closest names).
    """
    if not wanted:
        return torch.arange(len(names))
    where: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        where.setdefault(name, []).append(i)
    for label in wanted:
        if label not in where:
            close = difflib.get_close_matches(label, list(where), n=5, cutoff=0.0)
            raise UsageError(f"--labels: the closed-set model has no class {label!r}; closest names it has: "
                             + ", ".join(repr(c) for c in close))
    return torch.tensor([i for label in wanted for i in where[label]], dtype=torch.long)


def check_closed_set_options(config: RunConfig, name: str) -> None:
    """Refuse what a closed-set model cannot take: ``--vocab``, ``--prompt`` / ``--prompts``.

    Raises:
        UsageError: one of them given.
    """
    if config.vocab:
        raise UsageError(f"--vocab does not apply to model {name!r}: a closed-set classifier answers with its own "
                         "labels (use --labels A,B to restrict it to some of them)")
    if config.templates is not None:
        raise UsageError(f"--prompt / --prompts do not apply to model {name!r}: a closed-set classifier has no "
                         "text tower")


def load_image_classifier(config: RunConfig, name: str, device: torch.device,
                          dtype: torch.dtype, folder: str | None = None) -> ImageClassificationTask:
    """The closed-set task of model ``name``: a folder ``models.folder_kind`` knows (``folder``),
    else a transformers ``AutoModelForImageClassification`` checkpoint with its image processor.

    Raises:
        UsageError: ``--vocab``, ``--prompt`` or ``--prompts`` given; an unknown ``--labels`` name;
            with ``--strict-labels`` and ``--label-map``, two classes shown under the same name.
        ModelLoadError: the model cannot be loaded.
    """
    check_closed_set_options(config, name)
    classifier = models.load_closed_set(name, folder) if folder else _transformers_classifier(config, name)
    task = ImageClassificationTask(config, classifier, device, dtype)
    if config.label_map:
        report_issues(_same_names(task.labels), config.strict_labels)
    return task


def _same_names(shown: list[str]) -> list[LabelIssue]:
    """Classes shown under one name after ``--label-map``: ``text_issues``' ``same`` pairs (its
    normalisation) up to ``HYGIENE_MAX`` labels; beyond, where its O(L²) containment tests would
    take minutes (54,092 labels), the exactly equal names."""
    if len(shown) <= HYGIENE_MAX:
        return [i for i in text_issues(shown) if i.kind == "same"]
    seen: set[str] = set()
    issues = [LabelIssue("same", n, n) for n in shown if n in seen or seen.add(n)]
    return issues


def _transformers_classifier(config: RunConfig, name: str) -> models.ClosedSetModel:
    """A transformers ``...ForImageClassification`` checkpoint as a ``ClosedSetModel``."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model, processor = models.load(name, model_class=AutoModelForImageClassification,
                                   processor_class=AutoImageProcessor,
                                   trust_remote_code=config.trust_remote_code, model_kwargs={"dtype": torch.float32})
    id2label = model.config.id2label
    labels = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(model.config.num_labels)]
    image_processor = getattr(processor, "image_processor", processor)
    return models.ClosedSetModel(name, models.resolve(name), "transformers", labels, pixel_maker(image_processor),
                                 model, sigmoid=getattr(model.config, "problem_type", None) == "multi_label_classification",
                                 draft_size=_processor_size(image_processor))


def _processor_size(image_processor: Any) -> int | None:
    """Side in pixels of the model's input (crop size, else size), for draft decoding."""
    for attr in ("crop_size", "size"):
        size = size_dict(getattr(image_processor, attr, None))
        for key in ("height", "shortest_edge"):
            if size.get(key):
                return int(size[key])
    return None
