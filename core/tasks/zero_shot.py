"""What every zero-shot classify task does once the towers give embeddings, whatever runs them.

``ZeroShotTask`` holds the labels (label set, prompt templates, top-k), encodes the label prompts
once (through the embedding store: a label list is encoded once per machine), scores image
embeddings against them and writes the records. Two tasks build on it: ``ClassifyTask`` (the
model loaded with transformers, towers on torch or converted for OpenVINO / ONNX Runtime) and
``CompiledClassifyTask`` (a saved OpenVINO / ONNX Runtime conversion, without torch or
transformers). Both give the same records for the same embeddings and use the same store keys.

This module must not import torch: the torch-free task runs through it.
"""

from __future__ import annotations

import logging
from typing import Any, Hashable, Sequence

import numpy as np

from ..arrays import dtype_name
from ..config import RunConfig
from ..labels import ensemble, feature_issues, label_scores, text_issues
from ..output import ClassifyResult
from ..store import EmbeddingStore, NullStore
from .base import Task
from .label_setup import build_label_set, build_records, label_run_info, report_issues
from .stored import image_embeddings, prompt_features, store_parts

log = logging.getLogger(__name__)

#: Prompts per text-tower forward pass when the label features are computed (bounds memory for
#: 1,000 labels x several templates).
TEXT_BATCH = 256
#: SigLIP was trained on text padded to 64 tokens (model card, google/siglip-*).
SIGLIP_TEXT_LENGTH = 64


class ZeroShotTask(Task):
    """Zero-shot classification of a mini-batch against the run's labels (the shared part).

    ``forward``: ``pixel_values (M, 3, S, S)`` and / or embeddings read from the store →
    ``(B, L)`` float32 logits (``(B, L + 1)`` with ``--multi-label``'s neutral baseline).
    ``postprocess``: → B records with ``label``, ``score``, ``top_k`` (K best, best first).

    A subclass gives the model's facts and tokenizer: ``model_type``, ``image_recipe``,
    ``input_size``, ``text_max_length``, ``tokenize``, ``token_lengths``, ``logit_scale``,
    ``logit_bias``, ``weights_folder``, and ``prepare`` / ``collate``.

    Attributes:
        image_encoder / text_encoder: the backend's encoders (``core.backends``).
        store: the ``EmbeddingStore`` asked before the image encoder (``NullStore``: none).
        text_features: ``(L, D)`` float32 L2-normalised label features (NumPy), after ``setup``.
    """

    name = "classify"
    record_type = ClassifyResult
    #: Set by the engine (``core.store.StoreOpener``) when the run uses the embedding store.
    store_opener: Any = None
    #: Set by the engine (``core.backends.plan_backend``): the backend of the towers; ``None``: torch.
    backend: Any = None

    def __init__(self, config: RunConfig, model: Any, processor: Any, device: Any, dtype: Any, *,
                 model_type: str, store: EmbeddingStore | None = None) -> None:
        super().__init__(config, model, processor, device, dtype)
        self.model_type = model_type
        self.store: EmbeddingStore = store if store is not None else NullStore()
        self.image_encoder: Any = None
        self.text_encoder: Any = None
        self.label_set = build_label_set(config, model_type)
        self.labels = self.label_set.shown  # as written in the records (--label-map applied)
        # every label (and the multi-label baseline) in every template; _prompt_labels[i] names prompts[i]'s label
        self.prompts, self._prompt_groups, self._prompt_labels = self.label_set.expanded()
        self.top_k = min(config.top_k, len(self.labels))
        self.text_features: np.ndarray | None = None

    # -- what a subclass gives -------------------------------------------------------------------

    @property
    def image_recipe(self) -> dict[str, Any]:
        """The image processor's configuration (part of the store key)."""
        raise NotImplementedError

    @property
    def weights_folder(self) -> str | None:
        """The folder the weights were loaded from (the store key's weights identity)."""
        raise NotImplementedError

    @property
    def logit_scale(self) -> float:
        """``logit_scale.exp()``: the learned temperature (100 for Chinese-CLIP's checkpoints)."""
        raise NotImplementedError

    @property
    def logit_bias(self) -> float | None:
        """SigLIP's learned ``logit_bias`` for ``--multi-label``; ``None`` for CLIP-style models."""
        raise NotImplementedError

    def text_max_length(self) -> int | None:
        """Most tokens the text tower takes (``None``: no limit known)."""
        raise NotImplementedError

    def tokenize(self, texts: list[str], max_length: int | None, pad_to_max_length: bool) -> dict[str, Any]:
        """Token arrays of ``texts`` (``input_ids (N, T)``...), padded to the longest or to
        ``max_length``, truncated to ``max_length``."""
        raise NotImplementedError

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Token count of each text without truncation (special tokens included)."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------

    def _text_inputs(self) -> dict[str, Any]:
        """Token ids of the label prompts, truncated to ``text_max_length`` (one warning if any is
        cut); SigLIP's padded to 64."""
        limit = self.text_max_length()
        if limit:
            self._warn_truncated(limit)
        if "siglip" in self.model_type:
            return self.tokenize(self.prompts, min(SIGLIP_TEXT_LENGTH, limit or SIGLIP_TEXT_LENGTH), True)
        return self.tokenize(self.prompts, limit, False)

    def _warn_truncated(self, limit: int) -> None:
        lengths = self.token_lengths(self.prompts)
        cut = list(dict.fromkeys(label for label, n in zip(self._prompt_labels, lengths) if n > limit))
        if cut:
            shown = ", ".join(repr(shorten(label)) for label in cut[:3])
            if len(cut) > 3:
                shown += f" and {len(cut) - 3} more"
            log.warning("label%s %s %s longer than the %d text tokens the model takes (prompt included): only "
                        "the start is used", "s" if len(cut) > 1 else "", shown, "are" if len(cut) > 1 else "is", limit)

    def _label_features(self) -> np.ndarray:
        """Encode every prompt (``TEXT_BATCH`` at a time) and ensemble them per label:
        ``(L, D)`` float32 L2-normalised, plus a last row for the neutral baseline of CLIP-style
        ``--multi-label`` scores. Warns (``--strict-labels``: raises ``UsageError``) about labels
        with nearly identical features, unless they come from a built-in vocabulary."""
        # read from the embedding store first; only missing prompts are encoded (and stored)
        prompt_feats = prompt_features(self, self._text_inputs(), self._prompt_labels, TEXT_BATCH)
        feats = ensemble(prompt_feats, self._prompt_groups, self.label_set.groups)
        # a runtime's compiled text tower can go: the features are computed once per run
        release = getattr(self.text_encoder, "release", None)
        if release is not None:
            release()
        vocab = self.label_set.vocab
        if vocab is None or not vocab.builtin:
            names = self.label_set.names
            skip = {frozenset((i.first, i.second)) for i in text_issues(names)}
            report_issues(feature_issues(names, feats[:len(names)], skip=skip), self.config.strict_labels)
        return feats

    def use_store(self) -> None:
        """Point ``store`` at the store of the current model key (dtype and backend included),
        when the engine gave the task a ``store_opener``; else leave it as it is."""
        if self.store_opener is not None:
            self.store = self.store_opener.open(self.weights_folder, store_parts(self))

    def image_features(self, pixel_values: Any, keys: Sequence[Hashable] | None = None, *,
                       stored: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
        """``pixel_values (M, 3, S, S)`` → ``(B, D)`` float32 L2-normalised image embeddings (NumPy).

        With ``keys`` (one per image), embeddings ``store`` holds are taken from it and only the
        others go through ``image_encoder`` (and are then put in the store). ``stored`` (B entries)
        gives the embeddings already read from the store, ``None`` for each image that is a row of
        ``pixel_values`` (without it, B = M). See ``stored.image_embeddings``.
        """
        return image_embeddings(self, pixel_values, keys, stored)

    def forward(self, inputs: dict[str, Any]) -> np.ndarray:
        """``pixel_values (B, 3, S, S)`` (and optional store ``keys``, B of them) → logits
        ``(B, L)`` float32 (``(B, L + 1)`` with the neutral baseline of ``--multi-label``)."""
        feats = self.image_features(inputs["pixel_values"], inputs.get("keys"), stored=inputs.get("stored"))
        # scored in float32 NumPy, outside autocast: CPU autocast would run this product and the
        # softmax in bf16 (scores summing to 0.999, and top-1 flips between close labels)
        return self.logit_scale * feats @ self.text_features.T

    def postprocess(self, outputs: np.ndarray, bases: list[ClassifyResult]) -> list[ClassifyResult]:
        """``(B, L[+1])`` logits → scores (``core.labels.label_scores``: a softmax over the labels,
        or with ``--multi-label`` SigLIP's sigmoid with its ``logit_bias``, CLIP-style the sigmoid
        of the logit minus the neutral prompt's) → B records with ``label``, ``score``, ``top_k``
        (and ``labels`` with ``--multi-label``; ``--other-label`` when no label reaches
        ``--min-score``), see ``label_setup.build_records``.

        A row holding NaN or infinity (broken weights, an overflow in half precision) becomes an
        ``error`` ``"nonfinite: ..."``: never a NaN score.
        """
        scores = label_scores(outputs, len(self.labels), multi_label=self.config.multi_label,
                              logit_bias=self.logit_bias)
        return build_records(scores, bases, self.labels, self.top_k, self.config, self._nonfinite_error())

    def _nonfinite_error(self) -> str:
        reduced = dtype_name(self.dtype) != "float32" or \
            getattr(self.image_encoder, "precision", "float32") not in ("float32", None)
        hint = "; try --dtype float32" if reduced else ""
        return f"nonfinite: the model gave NaN or infinite scores for this image{hint}"

    def run_info(self) -> dict[str, Any]:
        """The label settings of this run: ``labels``, ``prompt`` (the template, or the list of
        templates of an ensemble), ``top_k``, ``vocab``, ``multi_label``, ``threshold``..."""
        templates = self.label_set.templates
        prompt = templates[0] if len(templates) == 1 else list(templates)
        return label_run_info(self.config, self.labels, self.top_k, prompt, self.label_set.vocab)


def shorten(text: str, width: int = 40) -> str:
    """``text`` cut to ``width`` characters with ``…`` (for naming long labels in messages)."""
    return text if len(text) <= width else text[:width - 1] + "…"
