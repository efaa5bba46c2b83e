"""The classify tasks' labels: where they come from, how they are prompted, checked and shown.

Shared by the zero-shot task (``zero_shot.py``) and the closed-set one (``image_classification.py``):
resolving ``--labels`` / ``--vocab`` / the default vocabulary, the prompt templates, label hygiene
(warnings, or exit 2 with ``--strict-labels``), and turning per-image decisions into records
(``label``, ``score``, ``top_k``, ``labels``; ``--other-label`` when the image abstains).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from .. import labels as vocabularies
from ..arrays import as_numpy
from ..config import RunConfig
from ..errors import UsageError
from ..output import ClassifyResult, LabelScore

log = logging.getLogger(__name__)


def resolve_labels(config: RunConfig) -> tuple[list[str], vocabularies.Vocabulary | None]:
    """``(labels, vocabulary)``: ``config.labels`` when given (vocabulary ``None``), else the
    labels of ``--vocab`` or of the default vocabulary.

    Raises:
        UsageError: an unknown vocabulary or an unreadable vocabulary file.
    """
    if config.labels:
        return list(config.labels), None
    vocab = vocabularies.load_vocab(config.vocab)
    return list(vocab.labels), vocab


def report_issues(issues: Sequence[vocabularies.LabelIssue], strict: bool) -> None:
    """Log one warning line per label pair; with ``strict``, raise instead.

    Raises:
        UsageError: ``strict`` and there is at least one issue (all pairs named in the message).
    """
    if not issues:
        return
    lines = vocabularies.issue_lines(issues)
    if strict:
        raise UsageError("--strict-labels: " + "; ".join(lines))
    for line in lines:
        log.warning("%s", line)


def check_text_hygiene(config: RunConfig) -> None:
    """Before the model loads: duplicates after normalisation and containment among the user's
    labels (a built-in vocabulary was checked when it was written; tests/test_labels.py).

    Raises:
        UsageError: an unknown vocabulary, or an issue with ``--strict-labels``.
    """
    names, vocab = resolve_labels(config)
    if vocab is None or not vocab.builtin:
        report_issues(vocabularies.text_issues(names), config.strict_labels)


@dataclass
class LabelSet:
    """The labels of a zero-shot run.

    Attributes:
        names: labels as put in the prompts (``L``).
        shown: labels as written in the records (``--label-map`` applied).
        templates: the prompt templates (``T``); each label's feature is their ensemble.
        vocab: the vocabulary the labels came from, ``None`` for ``--labels``.
        neutral: the baseline label of CLIP-style ``--multi-label`` scores, else ``None``.
    """

    names: list[str]
    shown: list[str]
    templates: tuple[str, ...]
    vocab: vocabularies.Vocabulary | None
    neutral: str | None

    def expanded(self) -> tuple[list[str], np.ndarray, list[str]]:
        """``(prompts, groups, prompt_labels)``: every name (then the neutral label, as group
        ``L``) in every template; ``groups (P,)`` the group of each prompt."""
        names = self.names + ([self.neutral] if self.neutral else [])
        prompts, groups = vocabularies.expand(names, self.templates)
        return prompts, groups, [names[g] for g in groups.tolist()]

    @property
    def groups(self) -> int:
        """Feature rows: L, plus one for the neutral baseline."""
        return len(self.names) + (1 if self.neutral else 0)


def build_label_set(config: RunConfig, model_type: str, *, sigmoid: bool) -> LabelSet:
    """The ``LabelSet`` of a zero-shot run on a model of ``model_type`` (``chinese_clip``...);
    ``sigmoid``: the family scores ``--multi-label`` with its own ``logit_bias`` (SigLIP), so no
    neutral baseline label is added.

    Raises:
        UsageError: an unknown vocabulary or an unreadable vocabulary file.
    """
    names, vocab = resolve_labels(config)
    templates = config.templates or vocabularies.default_templates(model_type)
    neutral = None
    if config.multi_label and not sigmoid:
        neutral = vocabularies.neutral_label(templates)
    shown = vocabularies.apply_label_map(names, config.label_map)
    return LabelSet(names, shown, tuple(templates), vocab, neutral)


def label_run_info(config: RunConfig, shown: Sequence[str], top_k: int, prompt: Any = None,
                   vocab: vocabularies.Vocabulary | None = None) -> dict[str, Any]:
    """The label settings of the ``run`` section (``RESUME_KEYS`` among them)."""
    info = {"labels": list(shown), "prompt": prompt, "top_k": top_k, "vocab": config.vocab,
            "multi_label": config.multi_label, "threshold": config.threshold, "min_score": config.min_score,
            "other_label": config.other_label}
    if vocab is not None:
        info["vocab"] = vocab.name if config.vocab else None
        if vocab.notes:
            info["vocab_notes"] = list(vocab.notes)
    return info


def build_records(scores: Any, bases: list[ClassifyResult], shown: Sequence[str], top_k: int,
                  config: RunConfig, error: str) -> list[ClassifyResult]:
    """``scores (B, L)`` → B records: ``label`` / ``score`` the best label (``other_label`` when
    ``--min-score`` is set and no label reaches it; ``score`` then stays the best label's score),
    ``top_k`` the K best, and with ``--multi-label`` ``labels`` every label over the threshold.

    A row holding NaN or infinity becomes an error record with ``error``.
    """
    scores = as_numpy(scores)
    finite = np.isfinite(scores).all(axis=-1)
    safe = np.where(finite[:, None], scores, np.zeros_like(scores))
    decisions = vocabularies.decide(safe, top_k, threshold=config.threshold if config.multi_label else None,
                                    min_score=config.min_score)
    records: list[ClassifyResult] = []
    for base, ok, (ranked, over, abstain) in zip(bases, finite.tolist(), decisions):
        if not ok:
            records.append(replace(base, error=error))
            continue
        top = [LabelScore(shown[i], float(v)) for i, v in ranked]
        passed = None if over is None else [LabelScore(shown[i], float(v)) for i, v in over]
        label = config.other_label if abstain else top[0].label
        records.append(replace(base, label=label, score=top[0].score, top_k=top, labels=passed))
    return records
