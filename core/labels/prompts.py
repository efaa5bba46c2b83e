"""Prompt ensembles: several templates per label, their text features averaged.

The recipe is CLIP's (Radford et al. 2021, arXiv:2103.00020, section 3.1.4; openai/CLIP
notebooks/Prompt_Engineering_for_ImageNet.ipynb, ``zeroshot_classifier``), which Chinese-CLIP
uses for its zero-shot results (OFA-Sys/Chinese-CLIP, cn_clip/eval/zeroshot_evaluation.py,
``zero_shot_classifier``) and open_clip for its own (``build_zero_shot_classifier``): encode every
template filled with the label, L2-normalise each feature, average them per label, L2-normalise
the mean. The text is encoded once per run, so the ensemble costs nothing per image.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import DEFAULT_PROMPT_TEMPLATE, fill_prompt, validate_prompt_template
from ..arrays import as_numpy
from ..errors import UsageError

#: Default templates for Chinese models (model type ``chinese_clip``), written for wwts: Chinese-
#: CLIP's own form first (cn_clip's ImageNet templates start with it), then a bare caption and two
#: that also fit a photo where the label is one thing among others.
CHINESE_TEMPLATES = ("一张{}的照片。", "{}的照片。", "一张包含{}的图片。", "照片里有{}。")
#: The label put into the templates to make the "no particular label" baseline of CLIP-style
#: multi-label scores (``scoring.neutral_label``): "something" / 某物.
NEUTRAL_LABELS = {"zh": "某物", "en": "something"}
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def read_prompts_file(path: Path) -> tuple[str, ...]:
    """Templates from ``--prompts FILE``: one per line, ``{}`` where the label goes (a line ``{}``
    alone is the bare label); blank lines and lines starting with ``#`` are skipped; UTF-8.

    Raises:
        UsageError: unreadable file, a line that is not a valid template (named by its line
            number), a repeated template, or no template at all.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read prompts file {path}: {exc}") from None
    templates: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            validate_prompt_template(line)
        except UsageError:
            raise UsageError(f"{path}, line {number}: {line!r} is not a template: it needs exactly one {{}} "
                             "where the label goes and no other braces, e.g. 一张{}的照片。") from None
        if "{}" not in line:
            raise UsageError(f"{path}, line {number}: {line!r} has no {{}} for the label")
        if line in templates:
            raise UsageError(f"{path}, line {number}: template {line!r} is given twice")
        templates.append(line)
    if not templates:
        raise UsageError(f"no templates in prompts file {path}")
    return tuple(templates)


def default_templates(model_type: str) -> tuple[str, ...]:
    """The templates used without ``--prompt`` / ``--prompts``: ``CHINESE_TEMPLATES`` for
    Chinese-CLIP, else the single ``DEFAULT_PROMPT_TEMPLATE`` (give English models ``--prompt``)."""
    return CHINESE_TEMPLATES if model_type == "chinese_clip" else (DEFAULT_PROMPT_TEMPLATE,)


def neutral_label(templates: Sequence[str]) -> str:
    """The label of the baseline prompt: 某物 when a template holds Chinese characters, else
    ``something``."""
    return NEUTRAL_LABELS["zh" if any(_CJK.search(t) for t in templates) else "en"]


def expand(labels: Sequence[str], templates: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Every label in every template: ``(texts, groups)``.

    ``texts`` has ``L * T`` prompts, label by label (``fill_prompt``: plain replacement, so braces
    in a label stay literal); ``groups (L * T,)`` int64 gives the label index of each.
    """
    texts = [fill_prompt(template, label) for label in labels for template in templates]
    groups = np.repeat(np.arange(len(labels), dtype=np.int64), len(templates))
    return texts, groups


def ensemble(features: Any, groups: Any, n_labels: int) -> np.ndarray:
    """Average L2-normalised prompt features per label and L2-normalise the mean.

    Args:
        features: ``(P, D)`` float32, each row L2-normalised (one per prompt): a NumPy array or
            anything ``as_numpy`` takes (a torch tensor on any device).
        groups: ``(P,)`` int64, the label index of each prompt.
        n_labels: L.

    Returns:
        ``(L, D)`` float32 NumPy array, L2-normalised. A label with one prompt keeps its feature
        bit for bit (the mean of one row is that row; it is not normalised again), so a
        one-template ensemble scores exactly like the single template.
    """
    feats = as_numpy(features)
    groups = np.asarray(as_numpy(groups), dtype=np.int64)
    sums = np.zeros((n_labels, feats.shape[1]), dtype=np.float32)
    np.add.at(sums, groups, feats)
    counts = np.bincount(groups, minlength=n_labels).astype(np.float32)[:, None]
    means = sums / np.maximum(counts, 1)
    renormed = means / np.maximum(np.linalg.norm(means, axis=-1, keepdims=True), 1e-12)
    return np.where(counts > 1, renormed, means).astype(np.float32)
