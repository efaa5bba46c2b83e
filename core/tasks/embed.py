"""Image embeddings from a dual encoder: ``wwts embed``, and the image path every dual-encoder head
(zero-shot classify, search) is built on.

Embedding is the base operation: each photo's pixels go through the image tower once (or come from
the embedding store), and a head adds what it scores them against (``zero_shot.ZeroShotTask``: the
label features; ``search.SearchTask``: the query's).

This module must not import torch: a torch-free run goes through it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Hashable, Sequence

import numpy as np

from .. import models
from ..arrays import dtype_name
from ..config import RunConfig
from ..input import EXACT_DRAFT_KEEP, FAST_DRAFT_KEEP
from ..output import EmbeddingRecord, ImageRecord
from ..store import EmbeddingStore, NullStore, StoredEmbedding, StoreOpener
from .task import Task
from .dual_encoder import DualEncoder
from .stored import collate_stored, image_embeddings, store_parts

#: The text a backend that converts both towers (OpenVINO, ONNX Runtime) exports the text tower
#: with when a head has no labels (``wwts embed``): never encoded.
EXAMPLE_PROMPT = "一张照片。"


class EmbedTask(Task):
    """Image embeddings of a ``DualEncoder`` (``wwts embed``).

    ``prepare``: one RGB image → ``pixel_values (1, 3, S, S)`` float32 (the encoder's ``prepare``).
    ``collate``: B of those → ``{"pixel_values": (M, 3, S, S)}`` (store hits in ``"stored"``).
    ``forward``: → ``(B, D)`` float32 L2-normalised embeddings.
    ``postprocess``: → ``EmbeddingRecord`` records (``embedding`` as D floats).

    Attributes:
        encoder: the ``DualEncoder`` (towers made by ``setup`` on the run's device and backend).
        store: the ``EmbeddingStore`` asked before the image tower (``NullStore``: none).
        store_opener: set by the engine (``core.store.StoreOpener``) when the run uses the store.
        backend: set by the engine (``core.backends.plan_backend``); ``None``: torch.
    """

    name = "embed"
    record_type = EmbeddingRecord
    store_opener: Any = None
    backend: Any = None

    def __init__(self, config: RunConfig, encoder: DualEncoder, device: Any, dtype: Any, *,
                 store: EmbeddingStore | None = None) -> None:
        super().__init__(config, encoder.model, None, device, dtype)
        self.encoder = encoder
        self._prepare = encoder.prepare  # its own attribute: a Ray decode task's copy drops the encoder
        self.store: EmbeddingStore = store if store is not None else NullStore()
        self._key_opener: StoreOpener | None = None

    @property
    def image_encoder(self) -> Any:
        """The image tower (``None`` before ``setup``)."""
        return self.encoder.image

    @property
    def text_encoder(self) -> Any:
        """The text tower (``None`` before ``setup``)."""
        return self.encoder.text

    @property
    def uses_torch(self) -> bool:
        """Whether the engine runs ``forward`` under inference mode and autocast (see
        ``DualEncoder.uses_torch``)."""
        return self.encoder.uses_torch

    @property
    def input_size(self) -> int | None:
        """Side in pixels of the image tower's input in this run (draft decoding)."""
        return self.encoder.image_size

    @property
    def draft_keep(self) -> int:
        """1 with the fast resize (the default), 2 with ``--exact-pixels`` (``Task.draft_keep``)."""
        return EXACT_DRAFT_KEEP if self.config.exact_pixels else FAST_DRAFT_KEEP

    def example_prompts(self) -> list[str]:
        """Prompts the text tower is exported with when a backend converts it."""
        return [EXAMPLE_PROMPT]

    def open(self) -> None:
        """Make the towers (``DualEncoder.build``) and open the store of the model key (dtype and
        backend included) when the engine gave the task a ``store_opener``."""
        self.encoder.build(self.device, self.dtype, self.backend, example=self.example_prompts(),
                           head=self.config.head)
        if self.store_opener is not None:
            self.store = self.store_opener.open(self.encoder.facts.get("weights_folder"), store_parts(self))

    def setup(self) -> None:
        """``open``: the towers and the store (a head adds its text features)."""
        self.open()

    def to(self, device: Any, dtype: Any) -> None:
        """Move a transformers model to ``device`` / ``dtype`` and run ``setup``; a saved export's
        runtime holds its towers: only ``setup`` runs."""
        if self.encoder.model is None:
            self.setup()
        else:
            super().to(device, dtype)

    def prepare(self, image: Any) -> Any:
        """One RGB image → ``pixel_values (1, 3, S, S)`` float32."""
        return self._prepare(image)

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """B ``(1, 3, S, S)`` items → ``{"pixel_values": (M, 3, S, S)}``. Items that are a
        ``core.store.StoredEmbedding`` (read from the store; never decoded) are left out of
        ``pixel_values`` and given in ``"stored"`` (see ``image_features``)."""
        return collate_stored(items, StoredEmbedding, self.encoder.concat)

    def image_features(self, pixel_values: Any, keys: Sequence[Hashable] | None = None, *,
                       stored: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
        """``pixel_values (M, 3, S, S)`` → ``(B, D)`` float32 L2-normalised image embeddings (NumPy).

        With ``keys`` (one per image), embeddings ``store`` holds are taken from it and only the
        others go through the image tower (and are then put in the store). ``stored`` (B entries)
        gives the embeddings already read from the store, ``None`` for each image that is a row of
        ``pixel_values`` (without it, B = M). See ``stored.image_embeddings``.
        """
        return image_embeddings(self, pixel_values, keys, stored)

    def forward(self, inputs: dict[str, Any]) -> np.ndarray:
        """``pixel_values`` (plus store ``keys`` / ``stored``) → ``(B, D)`` embeddings."""
        return self.image_features(inputs["pixel_values"], inputs.get("keys"), stored=inputs.get("stored"))

    def postprocess(self, outputs: np.ndarray, bases: list[ImageRecord]) -> list[ImageRecord]:
        """``(B, D)`` → B ``EmbeddingRecord`` records (a non-finite row: an error record)."""
        feats = np.asarray(outputs, dtype=np.float32)
        finite = np.isfinite(feats).all(axis=-1).tolist()
        error = "nonfinite: the model gave a NaN or infinite embedding for this image" + self.precision_hint()
        return [replace(base, embedding=row) if ok else replace(base, error=error)
                for base, ok, row in zip(bases, finite, feats.tolist())]

    def precision_hint(self) -> str:
        """``"; try --dtype float32"`` when the towers compute in reduced precision, else ``""``."""
        reduced = dtype_name(self.dtype) != "float32" or \
            getattr(self.image_encoder, "precision", "float32") not in ("float32", None)
        return "; try --dtype float32" if reduced else ""

    def run_info(self) -> dict[str, Any]:
        """``{"model_key"}``: the canonical JSON of the model key the embeddings belong to, and
        ``pixel_info``."""
        return {"model_key": self.model_key_text(), **self.pixel_info()}

    def pixel_info(self) -> dict[str, Any]:
        """``{"image_size": S px, "pixels": "fast" | "exact"}``: how this run made ``pixel_values``."""
        return {"image_size": self.input_size, "pixels": "exact" if self.config.exact_pixels else "fast"}

    def model_key_text(self) -> str | None:
        """The model key of the embeddings this task computes now: the store's, or (``--no-store``)
        the same key computed without opening a store; ``None`` if the weights cannot be identified."""
        text = getattr(self.store, "key_text", None)
        if text is not None or self.image_encoder is None:
            return text
        if self._key_opener is None:  # one per task: the weights are identified (hashed) once
            self._key_opener = StoreOpener(None, models.model_for("classify", self.config.lang, self.config.model))
        key = self._key_opener.key_for(self.encoder.facts.get("weights_folder"), store_parts(self))
        return key.text if key is not None else None
