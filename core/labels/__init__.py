"""Labels: vocabularies, prompt ensembles, label hygiene, label maps and multi-label scores.

A leaf package (it imports only ``..config``, ``..errors`` and ``..arrays``; NumPy for features, never torch):

- ``vocab``: the built-in vocabularies (``everyday``, the default; ``imagenet``) shipped as package
  data, and ``load_vocab`` for ``--vocab NAME|FILE``.
- ``prompts``: ``--prompts FILE``, the default Chinese templates, ``expand`` / ``ensemble``
  (CLIP's prompt-ensemble recipe).
- ``hygiene``: labels that are the same after normalisation, contain each other, or have nearly
  identical text features.
- ``mapping``: ``--label-map FILE.json``.
- ``scoring``: per-label scores for ``--multi-label`` and the per-record ``decide`` (top-k,
  labels over the threshold, abstain under ``--min-score``).
"""

from .hygiene import (MAX_PAIR_LINES, SIMILAR_COSINE, LabelIssue, feature_issues, issue_lines, normalize_label,
                      text_issues, to_simplified)
from .mapping import apply_label_map, read_label_map
from .prompts import (CHINESE_TEMPLATES, NEUTRAL_LABELS, default_templates, ensemble, expand, neutral_label,
                      read_prompts_file)
from .scoring import decide, label_scores, sigmoid_scores, softmax
from .vocab import BUILTIN_VOCABS, DEFAULT_VOCAB, Vocabulary, builtin_text, load_vocab

__all__ = [
    "MAX_PAIR_LINES", "SIMILAR_COSINE", "LabelIssue", "feature_issues", "issue_lines", "normalize_label",
    "text_issues", "to_simplified",
    "apply_label_map", "read_label_map",
    "CHINESE_TEMPLATES", "NEUTRAL_LABELS", "default_templates", "ensemble", "expand", "neutral_label",
    "read_prompts_file",
    "decide", "label_scores", "sigmoid_scores", "softmax",
    "BUILTIN_VOCABS", "DEFAULT_VOCAB", "Vocabulary", "builtin_text", "load_vocab",
]
