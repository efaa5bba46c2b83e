"""Retrieval with a classify model: ``wwts search`` (rank images by similarity to a text) and
``wwts embed`` (export image embeddings). Both are the classify task's image path (decode pool,
embedding store, image encoder) with another head:

- ``SearchTask``: ``forward`` → ``(B,)`` cosine similarity between each image's L2-normalised
  embedding and the query text's (Chinese-CLIP is trained for exactly this retrieval: Yang et al.
  2022, arXiv:2211.01335, section 3; its zero-shot and retrieval heads are the same dot product);
  the query is encoded bare (``--prompt`` may add a template).
- ``EmbedTask``: ``forward`` → ``(B, D)`` embeddings; no text is encoded at all.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from .. import models
from ..config import RunConfig
from ..output import EmbeddingRecord, ImageRecord, SearchResult
from ..store import NullStore, StoreOpener
from .base import Task
from .classify import ClassifyTask, check_architecture, load_dual_encoder
from .stored import store_parts


def _nonfinite(task: ClassifyTask) -> str:
    hint = "" if task.dtype == torch.float32 else "; try --dtype float32"
    return f"nonfinite: the model gave a NaN or infinite embedding for this image{hint}"


class SearchTask(ClassifyTask):
    """Similarity of each image to one query text (``config.labels[0]`` in ``config.prompt``'s
    template, the bare text by default).

    ``forward``: → ``(B,)`` float32 cosine similarities in [-1, 1].
    ``postprocess``: → ``SearchResult`` records (``score``), or an error for a non-finite row.
    """

    name = "search"
    record_type = SearchResult

    def forward(self, inputs: dict[str, Any]) -> np.ndarray:
        """``pixel_values (M, 3, S, S)`` (plus store ``keys`` / ``stored``, see ``image_features``) →
        ``(B,)`` float32 cosine similarities to the query (NumPy, on the CPU)."""
        feats = self.image_features(inputs["pixel_values"], inputs.get("keys"), stored=inputs.get("stored"))
        return feats @ self.text_features[0]

    def postprocess(self, outputs: np.ndarray, bases: list[ImageRecord]) -> list[ImageRecord]:
        """``(B,)`` similarities → B ``SearchResult`` records."""
        scores = [float(s) for s in outputs]
        return [replace(base, score=float(s)) if math.isfinite(s) else replace(base, error=_nonfinite(self))
                for base, s in zip(bases, scores)]

    def run_info(self) -> dict[str, Any]:
        """``{"query", "prompt"}``."""
        return {"query": self.config.labels[0], "prompt": self.config.prompt_template}


class EmbedTask(ClassifyTask):
    """Image embeddings only (``wwts embed``): no labels, no text tower.

    ``forward``: → ``(B, D)`` float32 L2-normalised embeddings.
    ``postprocess``: → ``EmbeddingRecord`` records (``embedding`` as D floats).
    """

    name = "embed"
    record_type = EmbeddingRecord

    def __init__(self, config: RunConfig, model: torch.nn.Module, processor: Any,
                 device: torch.device, dtype: torch.dtype) -> None:
        Task.__init__(self, config, model, processor, device, dtype)  # no label set: nothing to score
        self.model_type = getattr(model.config, "model_type", "") or ""
        self.store = NullStore()
        self.image_encoder = self.text_encoder = None
        self.labels, self._prompt_labels, self.top_k = [], [], 0
        # never encoded (``_label_features`` is empty); an example text for a backend that
        # converts the text tower along with the image tower (OpenVINO, ONNX Runtime)
        self.prompts = ["一张照片。"]
        self.text_features = None
        self._opener: StoreOpener | None = None

    def _label_features(self) -> np.ndarray:
        """No labels: an empty ``(0, 0)`` array."""
        return np.empty((0, 0), dtype=np.float32)

    def forward(self, inputs: dict[str, Any]) -> np.ndarray:
        """→ ``(B, D)`` embeddings (see ``ClassifyTask.image_features``)."""
        return self.image_features(inputs["pixel_values"], inputs.get("keys"), stored=inputs.get("stored"))

    def postprocess(self, outputs: np.ndarray, bases: list[ImageRecord]) -> list[ImageRecord]:
        """``(B, D)`` → B ``EmbeddingRecord`` records."""
        feats = np.asarray(outputs, dtype=np.float32)
        finite = np.isfinite(feats).all(axis=-1).tolist()
        return [replace(base, embedding=row) if ok else replace(base, error=_nonfinite(self))
                for base, ok, row in zip(bases, finite, feats.tolist())]

    def run_info(self) -> dict[str, Any]:
        """``{"model_key"}``: the canonical JSON of the model key the embeddings belong to."""
        return {"model_key": self.model_key_text()}

    def model_key_text(self) -> str | None:
        """The model key of the embeddings this task computes now: the store's, or (``--no-store``)
        the same key computed without opening a store; ``None`` if the weights cannot be identified."""
        text = getattr(self.store, "key_text", None)
        if text is not None or self.image_encoder is None:
            return text
        if self._opener is None:  # one per task: the weights are identified (hashed) once
            self._opener = StoreOpener(None, models.model_for("classify", self.config.lang, self.config.model))
        key = self._opener.key_for(getattr(self.model, "name_or_path", None), store_parts(self))
        return key.text if key is not None else None


def load_task(config: RunConfig, device: torch.device, dtype: torch.dtype) -> ClassifyTask:
    """``SearchTask`` (``config.retrieval == "search"``) or ``EmbedTask`` with the classify model
    named by ``config.model`` (or the default), weights in float32 on the CPU.

    Raises:
        ModelLoadError: the model cannot be loaded or is not a contrastive dual encoder.
    """
    name = models.model_for("classify", config.lang, config.model)
    check_architecture(name, models.load_config(name, trust_remote_code=config.trust_remote_code))
    model, processor = load_dual_encoder(config, name)
    cls = SearchTask if config.retrieval == "search" else EmbedTask
    return cls(config, model, processor, device, dtype)
