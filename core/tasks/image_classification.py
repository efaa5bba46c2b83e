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
- A model with a linear head on a pooled feature (ModelScope's ResNeSt: 2048-d) keeps that feature
  in the embedding store (``core.store``, through ``stored.image_embeddings`` as the dual encoders
  do): a later run over the same photos with other ``--labels`` or ``--top-k`` decodes no photo
  and runs only the head. The store key holds the weights' identity, the backend and precision
  that computed the feature and the preprocessing recipe (``closed_set_parts``).
"""

from __future__ import annotations

import difflib
from dataclasses import asdict
from typing import Any

import torch

from .. import models
from ..config import RunConfig
from ..arrays import dtype_name
from ..errors import UsageError
from ..input import DECODE_RECIPE
from ..labels import LabelIssue, apply_label_map, text_issues
from ..output import ClassifyResult
from ..store import EmbeddingStore, NullStore, StoredEmbedding
from .task import Task, pixel_maker, size_dict
from .label_setup import build_records, label_run_info, report_issues
from .classifier_runtime import ClosedSetTower, image_tower
from .stored import collate_stored, image_embeddings


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
    ``collate``: → ``{"pixel_values": (M, 3, S, S)}`` (store hits in ``"stored"``).
    ``forward``: → ``(B, G)`` float32 scores over the G distinct names answered (softmax over the
    classes, or over the ``--labels`` subset; sigmoid for a multi-label model), duplicates summed.
    ``postprocess``: → B records (``label``, ``score``, ``top_k``, ``labels``).

    Attributes:
        classifier: the ``models.ClosedSetModel``.
        labels: the G names as written in the records (mapped by ``--label-map``).
        classes: ``(K,)`` class indices scored (all C, or the ``--labels`` subset's).
        groups: ``(K,)`` the name (0..G-1) each scored class counts for.
        duplicates: how many names occur more than once among the scored classes.
        image_encoder: the ``ClosedSetTower`` (made by ``setup`` on the run's backend).
        store: the ``EmbeddingStore`` of pooled features (``NullStore``: none, or a model
            without a separate head).
        store_opener: set by the engine when the run uses the store.
    """

    name = "classify"
    record_type = ClassifyResult
    #: The run's ``backends.BackendChoice`` (set by the plan before ``to``); ``None``: torch.
    backend: Any = None
    store_opener: Any = None

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
        self.image_encoder: ClosedSetTower | None = None
        self.store: EmbeddingStore = NullStore()
        self._head = _subset_head(classifier.head, self.classes)

    @property
    def input_size(self) -> int | None:
        """Side in pixels the decoder may reduce photos to (the resize side), for draft decoding."""
        return self.classifier.draft_size

    def setup(self) -> None:
        """Make the tower the backend names, once (``classifier_runtime.image_tower``: an ONNX folder
        on OpenVINO or ONNX Runtime, a torch module converted for them and cached), and open the
        store of the model key (``closed_set_parts``) when the engine gave a ``store_opener`` and
        the tower gives features."""
        if self.image_encoder is None:
            self.image_encoder = image_tower(self.classifier, self.backend)
            self.model = self.classifier.module if self.image_encoder.backend == "torch" else None
        if self.store_opener is not None and self.image_encoder.features:
            self.store = self.store_opener.open(self.classifier.folder, closed_set_parts(self))

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        """Make the tower (``setup``) and move a torch module (a runtime's model stays on the CPU)."""
        self.device, self.dtype = device, dtype
        self.setup()
        if self.model is not None:
            self.model.to(device)

    def prepare(self, image: Any) -> torch.Tensor:
        """One RGB image → ``pixel_values (1, 3, S, S)`` float32."""
        pixels = self._pixels(image)
        return pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(pixels)

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """B ``(1, 3, S, S)`` tensors → ``{"pixel_values": (M, 3, S, S)}``; items that are a
        ``core.store.StoredEmbedding`` (a feature read from the store, never decoded) are given in
        ``"stored"`` instead (``stored.collate_stored``)."""
        return collate_stored(items, StoredEmbedding, torch.cat)

    def class_logits(self, inputs: dict[str, Any]) -> torch.Tensor:
        """``(B, K)`` float32 logits of the scored classes: the head on the ``(B, D)`` pooled
        features (from the store, or the tower: ``stored.image_embeddings``), or the tower's
        ``(B, C)`` logits of a model without a separate head, indexed by ``classes``."""
        if self._head is None:
            logits = torch.from_numpy(self.image_encoder.encode(inputs["pixel_values"]))
            return logits[:, self.classes]
        feats = image_embeddings(self, inputs.get("pixel_values"), inputs.get("keys"), inputs.get("stored"))
        weight, bias = self._head
        return torch.nn.functional.linear(torch.from_numpy(feats), weight, bias)

    def forward(self, inputs: dict[str, Any]) -> torch.Tensor:
        """``pixel_values (B, 3, S, S)`` → ``(B, G)`` float32 scores (see the class docstring),
        computed in float32 outside autocast."""
        with torch.autocast(device_type=self.device.type, enabled=False):
            logits = self.class_logits(inputs).float()
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
        info.update(prompt=None, vocab=None, closed_set=True,
                    computed_by=getattr(self.image_encoder, "where", None))
        if self.duplicates:
            info["duplicate_labels"] = (f"{self.duplicates} names occur more than once in the model's label list: "
                                        "each is reported once, its probabilities summed")
        return info


def closed_set_parts(task: ImageClassificationTask) -> dict[str, Any]:
    """The model-key parts of a closed-set task's stored features (the opener adds the weights'
    identity): the model kind, what computed the features (``torch``, ``openvino float32``,
    ``onnxruntime int8``...) and in which dtype (torch's autocast), ``--quantize``, the input
    size, the whole transform recipe and wwts' decode-recipe version. JSON-ready."""
    tower = task.image_encoder
    transform = task.classifier.transform
    return {"model_type": f"closed-set/{task.classifier.kind}", "backend": tower.store_name,
            "dtype": dtype_name(task.dtype) if tower.backend == "torch" else "float32",
            "quantize": task.config.quantize, "input_size": getattr(transform, "input_size", None),
            "preprocess": asdict(transform), "decode_recipe": DECODE_RECIPE}


def _subset_head(head: tuple[Any, Any] | None, classes: torch.Tensor) -> tuple[Any, Any] | None:
    """The head's rows of the scored ``classes`` (``(K, D)``, ``(K,)``); all C rows as they are
    (memory-mapped, not copied) when every class is scored."""
    if head is None:
        return None
    weight, bias = head
    if len(classes) == weight.shape[0] and torch.equal(classes, torch.arange(len(classes))):
        return weight, bias
    return weight.index_select(0, classes), bias.index_select(0, classes)


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
