"""Zero-shot image classification with a dual encoder (Chinese-CLIP, CLIP, SigLIP), whatever
runs its towers (torch, OpenVINO, ONNX Runtime, a saved export without torch).

Scoring follows Chinese-CLIP's zero-shot recipe (Yang et al. 2022, arXiv:2211.01335; code
OFA-Sys/Chinese-CLIP, cn_clip/eval/zeroshot_evaluation.py): every label is put into a prompt
template, the text features are computed ONCE per run (through the embedding store: a label list
is encoded once per machine) and L2-normalised, and each image's L2-normalised features are scored
against them as ``logit_scale.exp() * image @ text.T`` followed by a softmax over the labels.
Building the classifier once and reusing it for every batch is open_clip's
``build_zero_shot_classifier`` pattern (src/open_clip/zero_shot_classifier.py).

SigLIP is trained with a sigmoid loss; wwts still reports a softmax over the labels (its
``logit_bias`` is the same for every label, so the ranking is the one SigLIP gives), which keeps
the scores of all models comparable and summing to 1.

This module must not import torch: a torch-free run goes through it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..config import RunConfig
from ..labels import ensemble, feature_issues, label_scores, text_issues
from ..output import ClassifyResult
from ..store import EmbeddingStore
from .dual_encoder import DualEncoder
from .embed import EmbedTask
from .label_setup import build_label_set, build_records, label_run_info, report_issues
from .stored import prompt_features

log = logging.getLogger(__name__)

#: Prompts per text-tower forward pass when the label features are computed (bounds memory for
#: 1,000 labels x several templates).
TEXT_BATCH = 256


class ZeroShotTask(EmbedTask):
    """Zero-shot classification of a mini-batch against the run's labels: ``EmbedTask``'s image
    embeddings with a label head (open_clip's ``build_zero_shot_classifier`` pattern: the label
    features are built once per run).

    ``forward``: ``pixel_values (M, 3, S, S)`` and / or embeddings read from the store →
    ``(B, L)`` float32 logits (``(B, L + 1)`` with ``--multi-label``'s neutral baseline).
    ``postprocess``: → B records with ``label``, ``score``, ``top_k`` (K best, best first).

    Attributes:
        label_set: the labels, templates and vocabulary (``label_setup.LabelSet``).
        labels: the labels as written in the records (``--label-map`` applied).
        prompts: every label in every template (then the neutral baseline's).
        text_features: ``(L, D)`` float32 L2-normalised label features (NumPy), after ``setup``.
    """

    name = "classify"
    record_type = ClassifyResult

    def __init__(self, config: RunConfig, encoder: DualEncoder, device: Any, dtype: Any, *,
                 store: EmbeddingStore | None = None) -> None:
        super().__init__(config, encoder, device, dtype, store=store)
        self.label_set = build_label_set(config, encoder.model_type, sigmoid=encoder.quirks["sigmoid"])
        self.labels = self.label_set.shown  # as written in the records (--label-map applied)
        # every label (and the multi-label baseline) in every template; _prompt_labels[i] names prompts[i]'s label
        self.prompts, self._prompt_groups, self._prompt_labels = self.label_set.expanded()
        self.top_k = min(config.top_k, len(self.labels))
        self.text_features: np.ndarray | None = None

    @property
    def logit_scale(self) -> float:
        """``logit_scale.exp()``: the learned temperature (100 for Chinese-CLIP's checkpoints)."""
        return float(self.encoder.facts["logit_scale"])

    @property
    def logit_bias(self) -> float | None:
        """SigLIP's learned ``logit_bias`` for ``--multi-label``; ``None`` for CLIP-style models
        (their multi-label scores use a neutral prompt instead)."""
        bias = self.encoder.facts.get("logit_bias")
        return None if self.label_set.neutral is not None or bias is None else float(bias)

    def example_prompts(self) -> list[str]:
        """The first label prompts (up to 64): the text tower's export example (the first two) and
        the int8 gate's top-1 prompts (``backends.int8_gate.GATE_PROMPTS``)."""
        return self.prompts[:64]

    def setup(self) -> None:
        """The towers and the store (``EmbedTask.open``), then the label prompts encoded once:
        ``text_features`` ``(L, D)``, float32, L2-normalised, a NumPy array (scoring runs on the
        CPU, after the image tower). After a move to another device the features are kept."""
        self.open()
        if self.text_features is None:
            self.text_features = self._label_features()

    def _text_inputs(self) -> dict[str, Any]:
        """Token ids of the label prompts, truncated to ``text_max_length`` (one warning if any is
        cut); SigLIP's padded to 64."""
        limit = self.encoder.facts.get("text_max_length")
        if limit:
            self._warn_truncated(limit)
        padding = self.encoder.quirks["text_padding"]
        if padding:
            return self.encoder.tokenize(self.prompts, min(padding, limit or padding), True)
        return self.encoder.tokenize(self.prompts, limit, False)

    def _warn_truncated(self, limit: int) -> None:
        lengths = self.encoder.token_lengths(self.prompts)
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
        return build_records(scores, bases, self.labels, self.top_k, self.config,
                             "nonfinite: the model gave NaN or infinite scores for this image" + self.precision_hint())

    def run_info(self) -> dict[str, Any]:
        """The label settings of this run: ``labels``, ``prompt`` (the template, or the list of
        templates of an ensemble), ``top_k``, ``vocab``, ``multi_label``, ``threshold``..., and
        ``pixel_info`` (image size, fast or exact pixels)."""
        templates = self.label_set.templates
        prompt = templates[0] if len(templates) == 1 else list(templates)
        return {**label_run_info(self.config, self.labels, self.top_k, prompt, self.label_set.vocab),
                **self.pixel_info()}


def shorten(text: str, width: int = 40) -> str:
    """``text`` cut to ``width`` characters with ``…`` (for naming long labels in messages)."""
    return text if len(text) <= width else text[:width - 1] + "…"
