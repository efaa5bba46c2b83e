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

from dataclasses import dataclass

import torch


def sigmoid_scores(logits: torch.Tensor, baseline: torch.Tensor | float) -> torch.Tensor:
    """Per-label scores ``sigmoid(logits - baseline)`` in [0, 1], float32.

    Args:
        logits: ``(B, L)`` ``logit_scale.exp() * cos(image, label)``.
        baseline: SigLIP: ``-logit_bias`` (a number); CLIP-style: ``(B, 1)`` the logits of the
            neutral prompt for each image.
    """
    return torch.sigmoid(logits.float() - baseline)


@dataclass(frozen=True)
class Decision:
    """What one image's record shows.

    Attributes:
        top_k: ``(label index, score)`` of the K best, best first.
        passed: ``--multi-label``: every ``(label index, score)`` with score >= threshold, best
            first; ``None`` in single-label runs.
        abstain: True when ``--min-score`` is set and no label reaches it (the record's label is
            then ``--other-label``).
    """

    top_k: list[tuple[int, float]]
    passed: list[tuple[int, float]] | None
    abstain: bool


def decide(scores: torch.Tensor, top_k: int, *, threshold: float | None = None,
           min_score: float | None = None) -> list[Decision]:
    """``scores (B, L)`` (finite) → B decisions.

    Args:
        scores: softmax probabilities, or per-label scores with ``--multi-label``.
        top_k: K, at most L.
        threshold: ``--multi-label``'s threshold (``None``: single-label, ``passed`` is ``None``).
        min_score: ``--min-score`` (``None``: never abstain).
    """
    scores = scores.float().cpu()
    values, indices = scores.topk(top_k, dim=-1)
    order = scores.argsort(dim=-1, descending=True) if threshold is not None else None
    decisions = []
    for row in range(scores.shape[0]):
        top = list(zip(indices[row].tolist(), values[row].tolist()))
        passed = None
        if order is not None:
            ranked = order[row][scores[row, order[row]] >= threshold]
            passed = list(zip(ranked.tolist(), scores[row, ranked].tolist()))
        abstain = min_score is not None and top[0][1] < min_score
        decisions.append(Decision(top, passed, abstain))
    return decisions
