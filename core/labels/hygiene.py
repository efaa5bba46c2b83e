"""Label hygiene: find labels that would compete with each other before a run starts.

Two labels that mean the same thing split an image's probability between them, and a label that
contains another (手机 / 智能手机) makes the two fight over the same photos. Three checks, each
naming the pair:

- ``same``: equal after ``normalize_label`` (Unicode NFKC folds full-width and half-width forms
  and compatibility characters, ``casefold`` folds case, OpenCC's ``t2s`` table maps traditional
  to simplified characters, runs of spaces collapse);
- ``contains``: one normalised label is a substring of the other;
- ``similar``: the cosine of their text features is at least ``SIMILAR_COSINE`` (features as the
  run will use them: L2-normalised, prompt ensemble applied).

Traditional → simplified uses ``opencc-python-reimplemented`` (the OpenCC project's conversion
tables, pure Python), imported on first use.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from ..arrays import as_numpy

#: Cosine of two labels' text features at or above which they are reported as nearly identical.
#: Chinese-CLIP ViT-B/16 puts close synonyms (轿车 / 小汽车) around 0.93-0.97 and merely related
#: labels (猫 / 狗) around 0.80-0.90 with the default templates; 0.97 flags near-synonyms only.
SIMILAR_COSINE = 0.97
#: Pairs named one line each before the rest are summed up in one more line.
MAX_PAIR_LINES = 20
_SPACES = re.compile(r"\s+")


@lru_cache(maxsize=1)
def _t2s():
    """The OpenCC traditional → simplified converter (loads its tables once)."""
    from opencc import OpenCC

    return OpenCC("t2s")


def to_simplified(text: str) -> str:
    """``text`` with traditional Chinese characters converted to simplified (OpenCC ``t2s``)."""
    return _t2s().convert(text)


def normalize_label(label: str) -> str:
    """The form labels are compared in: NFKC, case-folded, traditional → simplified, spaces
    collapsed and stripped (``" Ｃａｔ "`` → ``"cat"``, ``"貓咪"`` → ``"猫咪"``)."""
    text = unicodedata.normalize("NFKC", label).casefold()
    text = to_simplified(text)
    return _SPACES.sub(" ", text).strip()


@dataclass(frozen=True)
class LabelIssue:
    """One pair of labels that may compete.

    Attributes:
        kind: ``"same"``, ``"contains"`` or ``"similar"``.
        first, second: the two labels as given (``first`` comes first in the list; for
            ``contains``, ``first`` is the shorter one).
        cosine: the features' cosine for ``similar``, else ``None``.
    """

    kind: str
    first: str
    second: str
    cosine: float | None = None

    def message(self) -> str:
        """One line naming the pair (labels quoted with ``repr`` so spaces and look-alikes show)."""
        a, b = repr(self.first), repr(self.second)
        if self.kind == "same":
            return f"labels {a} and {b} are the same after normalisation (width, traditional/simplified, spaces)"
        if self.kind == "contains":
            return f"label {b} contains label {a}: the two compete for the same images"
        return (f"labels {a} and {b} have nearly identical text features (cosine {self.cosine:.3f} >= "
                f"{SIMILAR_COSINE}): the model can hardly tell them apart")


def text_issues(labels: Sequence[str]) -> list[LabelIssue]:
    """``same`` and ``contains`` pairs among ``labels``, in list order.

    O(L²) substring tests on normalised text: 1,000 labels take well under a second.
    """
    norms = [normalize_label(label) for label in labels]
    issues: list[LabelIssue] = []
    for i, a in enumerate(norms):
        for j in range(i + 1, len(norms)):
            b = norms[j]
            if a == b:
                issues.append(LabelIssue("same", labels[i], labels[j]))
            elif a in b:
                issues.append(LabelIssue("contains", labels[i], labels[j]))
            elif b in a:
                issues.append(LabelIssue("contains", labels[j], labels[i]))
    return issues


def feature_issues(labels: Sequence[str], features: Any, *,
                   threshold: float = SIMILAR_COSINE, skip: set[frozenset[str]] = frozenset()) -> list[LabelIssue]:
    """``similar`` pairs: labels whose L2-normalised text features ``(L, D)`` have a cosine of at
    least ``threshold``; pairs in ``skip`` (already reported by ``text_issues``) are left out."""
    feats = as_numpy(features)
    sims = np.triu(feats @ feats.T, k=1)
    rows, cols = np.nonzero(sims >= threshold)
    issues = []
    for i, j in zip(rows.tolist(), cols.tolist()):
        if frozenset((labels[i], labels[j])) not in skip:
            issues.append(LabelIssue("similar", labels[i], labels[j], float(sims[i, j])))
    return issues


def issue_lines(issues: Sequence[LabelIssue], limit: int = MAX_PAIR_LINES) -> list[str]:
    """One line per issue, at most ``limit`` of them, then ``"... and N more pairs"``."""
    lines = [issue.message() for issue in issues[:limit]]
    if len(issues) > limit:
        lines.append(f"... and {len(issues) - limit} more label pairs like these")
    return lines
