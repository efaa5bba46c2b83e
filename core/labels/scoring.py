"""Scores for several labels per image, and the decision each record shows.

Single-label runs score with a softmax over the labels (scores sum to 1: they say which label
fits best, not whether any fits). ``--multi-label`` needs a score per label that does not depend
on the other labels, in [0, 1], compared with ``--threshold``:

- SigLIP: ``sigmoid(logit_scale.exp() * cos + logit_bias)``, the per-pair probability its
  sigmoid loss trains (Zhai et al. 2023, arXiv:2303.15343, eq. 1).
- CLIP-style models (Chinese-CLIP, CLIP), trained with a softmax loss, have no such probability.
  wwts uses a two-way softmax between the label's prompt and the same templates filled with a
  neutral word (某物 / "something"): ``sigmoid(logit_scale.exp() * (cos(image, label) -
  cos(image, neutral)))``. It is the model's own softmax restricted to {label, "a photo of
  something"}: above 0.5 when the label describes the image better than "something" does, and
  unaffected by which other labels are in the list, so a threshold means the same with 5 labels
  or 1,000. (Binary zero-shot against a generic prompt is the usual way to ask CLIP a yes/no
  question; the temperature is the model's learned one, no fitting on our side.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..arrays import as_numpy


def softmax(logits: Any) -> np.ndarray:
    """Softmax over the last axis in float32 (the max is subtracted first, so large logits do not
    overflow): ``(B, L)`` → ``(B, L)`` rows summing to 1. A row holding NaN stays NaN."""
    x = as_numpy(logits).astype(np.float32, copy=False)
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def sigmoid_scores(logits: Any, baseline: Any) -> np.ndarray:
    """Per-label scores ``sigmoid(logits - baseline)`` in [0, 1], float32.

    Args:
        logits: ``(B, L)`` ``logit_scale.exp() * cos(image, label)``.
        baseline: SigLIP: ``-logit_bias`` (a number); CLIP-style: ``(B, 1)`` the logits of the
            neutral prompt for each image.
    """
    diff = as_numpy(logits).astype(np.float32, copy=False) - as_numpy(baseline).astype(np.float32, copy=False)
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-diff))).astype(np.float32)


def label_scores(logits: Any, n_labels: int, *, multi_label: bool, logit_bias: float | None = None) -> np.ndarray:
    """``(B, L[+1])`` logits (``logit_scale.exp() * image @ text.T``) → ``(B, L)`` scores.

    Single-label: a softmax over the L labels. ``--multi-label``: SigLIP (``logit_bias`` given)
    ``sigmoid(logit + logit_bias)``; CLIP-style, the sigmoid of each label's logit minus the
    neutral prompt's (the last column, see the module docstring).
    """
    logits = as_numpy(logits)
    if not multi_label:
        return softmax(logits[:, :n_labels])
    if logit_bias is not None:
        return sigmoid_scores(logits[:, :n_labels], -float(logit_bias))
    return sigmoid_scores(logits[:, :n_labels], logits[:, n_labels:n_labels + 1])


def decide(scores: Any, top_k: int, *, threshold: float | None = None,
           min_score: float | None = None) -> list[tuple[list[tuple[int, float]], list[tuple[int, float]] | None, bool]]:
    """``scores (B, L)`` (finite) → B decisions ``(top_k, passed, abstain)``, what each image's
    record shows: ``top_k`` the ``(label index, score)`` of the K best, best first; ``passed``
    (``--multi-label``) every ``(label index, score)`` with score >= threshold, best first, ``None``
    in single-label runs; ``abstain`` True when ``--min-score`` is set and no label reaches it (the
    record's label is then ``--other-label``).

    Args:
        scores: softmax probabilities, or per-label scores with ``--multi-label``.
        top_k: K, at most L.
        threshold: ``--multi-label``'s threshold (``None``: single-label, ``passed`` is ``None``).
        min_score: ``--min-score`` (``None``: never abstain).
    """
    scores = as_numpy(scores)
    # a stable sort, best first: equal scores keep the labels' order
    order = np.argsort(-scores, axis=-1, kind="stable")
    decisions = []
    for row in range(scores.shape[0]):
        ranked = order[row]
        top = [(int(i), float(scores[row, i])) for i in ranked[:top_k]]
        passed = None
        if threshold is not None:
            passed = [(int(i), float(scores[row, i])) for i in ranked if scores[row, i] >= threshold]
        abstain = min_score is not None and top[0][1] < min_score
        decisions.append((top, passed, abstain))
    return decisions
