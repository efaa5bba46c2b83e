"""Vocabularies: the label lists ``wwts classify`` scores against when no ``--labels`` are given.

Built in (package data in ``core/labels/data``):

- ``everyday`` (the default): 345 categories people photograph (people, pets and animals, food
  and drink, vehicles, scenery, buildings and places, documents and screenshots, plants, events,
  everyday things), written for wwts and checked to hold no two labels that are the same after
  normalisation and no label that contains another (``hygiene.text_issues``).
- ``imagenet``: the 1,000 ImageNet-1k classes in Chinese from OFA-Sys/Chinese-CLIP
  (``datasets/ImageNet-1K/label_cn.txt``, MIT, notice in ``data/LICENSE-imagenet-1k-zh.txt``).
  Three names repeat for different classes (导弹: classes 657 missile and 744 projectile;
  有轨电车: 705 passenger car and 829 streetcar; 太阳镜: 836 sunglass and 837 sunglasses); each is
  kept once, so the vocabulary has 997 labels. Five names written in traditional characters
  (豹紋壁虎...) are shown in simplified characters. ``Vocabulary.notes`` says both.

``--vocab FILE`` reads a user's file with the rules of ``--labels-file`` (``read_labels_file``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..config import read_labels_file
from ..errors import UsageError
from .hygiene import to_simplified

log = logging.getLogger(__name__)

#: Built-in vocabularies: name → file in ``core/labels/data``.
BUILTIN_VOCABS = {"everyday": "everyday-zh.txt", "imagenet": "imagenet-1k-zh.txt"}
#: The vocabulary of ``wwts classify`` without ``--labels``, ``--labels-file`` or ``--vocab``.
DEFAULT_VOCAB = "everyday"


@dataclass(frozen=True)
class Vocabulary:
    """A label list with where it came from.

    Attributes:
        name: ``"everyday"``, ``"imagenet"``, or the path of a user's file as given.
        labels: the distinct labels, in file order.
        builtin: True for the vocabularies shipped with wwts.
        notes: what loading changed, one sentence each (merged repeats, converted characters).
    """

    name: str
    labels: tuple[str, ...]
    builtin: bool
    notes: tuple[str, ...] = ()


def builtin_text(name: str) -> str:
    """The text of the built-in vocabulary file ``name`` (``"everyday"``, ``"imagenet"``).

    Raises:
        KeyError: not a built-in vocabulary.
    """
    return resources.files(__package__).joinpath("data", BUILTIN_VOCABS[name]).read_text(encoding="utf-8")


def _builtin(name: str) -> Vocabulary:
    """Load a built-in vocabulary: comments and blank lines skipped, repeats merged (first
    occurrence kept), traditional characters converted to simplified; each change in ``notes``."""
    seen: dict[str, list[int]] = {}
    converted: list[str] = []
    for index, line in enumerate(builtin_text(name).splitlines()):
        label = line.split("#", 1)[0].strip()
        if not label:
            continue
        simple = to_simplified(label)
        if any(ord(ch) > 0xFFFF for ch in simple):  # e.g. 鳽 → 𫛚 (Extension F): few fonts show it
            simple = label
        if simple != label:
            converted.append(f"{label}→{simple}")
        seen.setdefault(simple, []).append(index)
    notes = []
    repeats = {label: lines for label, lines in seen.items() if len(lines) > 1}
    if repeats:
        where = ", ".join(f"{label} (lines {', '.join(str(i + 1) for i in lines)})" for label, lines in repeats.items())
        notes.append(f"{len(repeats)} names repeat for different classes and are kept once: {where}")
    if converted:
        notes.append(f"{len(converted)} labels converted to simplified characters: {', '.join(converted)}")
    return Vocabulary(name, tuple(seen), builtin=True, notes=tuple(notes))


def load_vocab(spec: str | None) -> Vocabulary:
    """The vocabulary ``--vocab spec`` names: a built-in name, else a file (``None``: the default).

    Raises:
        UsageError: neither a built-in name nor a readable labels file (the message lists the
            built-in names), or a file with no labels or a duplicate label (``read_labels_file``).
    """
    spec = DEFAULT_VOCAB if spec is None else spec
    if spec in BUILTIN_VOCABS:
        vocab = _builtin(spec)
        for note in vocab.notes:
            log.info("vocabulary %s: %s", spec, note)
        return vocab
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--vocab {spec!r} is neither a built-in vocabulary ({', '.join(BUILTIN_VOCABS)}) "
                         "nor a file of labels (one per line)")
    return Vocabulary(spec, read_labels_file(path), builtin=False)
