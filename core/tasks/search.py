"""``wwts search``: rank images by similarity to a text, with a dual encoder.

``SearchTask`` is the zero-shot head with one label, the query: ``forward`` → ``(B,)`` cosine
similarity between each image's L2-normalised embedding and the query text's (Chinese-CLIP is
trained for exactly this retrieval: Yang et al. 2022, arXiv:2211.01335, section 3; its zero-shot
and retrieval heads are the same dot product). The query is encoded bare (``--prompt`` may add a
template).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from ..output import ImageRecord, SearchResult
from .zero_shot import ZeroShotTask


class SearchTask(ZeroShotTask):
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
        error = "nonfinite: the model gave a NaN or infinite embedding for this image" + self.precision_hint()
        return [replace(base, score=float(s)) if math.isfinite(s) else replace(base, error=error)
                for base, s in zip(bases, (float(s) for s in outputs))]

    def run_info(self) -> dict[str, Any]:
        """``{"query", "prompt"}``."""
        return {"query": self.config.labels[0], "prompt": self.config.prompt_template}
