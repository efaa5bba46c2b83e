"""The store seam: embeddings kept by key, asked for before an encoder computes them.

A key names one image's content for one model (``SqliteStore`` keys images by the BLAKE3 hash of
their bytes, in one file per model key) or one label's prompt (``TextKey``); values are ``(D,)`` float32 CPU tensors, L2-normalised as the encoder gave them.
``NullStore`` keeps nothing, so a task that asks it always computes: the behaviour of a run
without a store. This module imports nothing from the rest of wwts (the store is a leaf).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class TextKey:
    """The key of one label's text features (the store keeps them beside the image embeddings).

    Attributes:
        text: the prompt as encoded (template filled with the label), e.g. ``"一张猫的照片。"``.
        label: the label it was made from (kept for ``wwts store info``; part of the key).
        settings: the tokenizer settings that change the features (max length, padding), as text.
    """

    text: str
    label: str = ""
    settings: str = ""


@dataclass(frozen=True)
class StoredEmbedding:
    """What stands for an image's model inputs when its embedding was read from the store before
    decoding: the image tower is not run for it.

    Attributes:
        vector: ``(D,)`` float32, L2-normalised, on the CPU.
    """

    vector: np.ndarray


@dataclass(frozen=True)
class StoredCaption:
    """What stands for an image's model inputs when its caption was read from the store before
    decoding (``captions.CaptionStore``): the caption model is not run for it.

    Attributes:
        text: the caption as a fresh run would write it.
    """

    text: str


@dataclass(frozen=True)
class StoredImage:
    """An image found in the store: its embedding (or caption) and the facts its record needs.

    Attributes:
        key: the content hash of the file's bytes.
        vector: ``(D,)`` float32 embedding, L2-normalised (``None`` for a caption).
        width, height: pixels after EXIF orientation; frames: frame count; note: the decoder's remark.
        caption: the stored caption (``CaptionStore.lookup``); ``None`` for an embedding.
    """

    key: str
    vector: np.ndarray | None
    width: int
    height: int
    frames: int = 1
    note: str | None = None
    caption: str | None = None

    def stored(self) -> StoredEmbedding | StoredCaption:
        """What stands for the image's model inputs: its ``StoredCaption`` or ``StoredEmbedding``."""
        return StoredEmbedding(self.vector) if self.caption is None else StoredCaption(self.caption)


@runtime_checkable
class EmbeddingStore(Protocol):
    """Embeddings by key.

    ``get(keys)`` returns the embeddings it holds for some of ``keys`` (missing keys are simply
    absent from the result; never an error); ``put(items)`` stores ``key → (D,) tensor`` pairs.
    """

    def get(self, keys: Sequence[Hashable]) -> dict[Hashable, np.ndarray]:
        """The stored ``(D,)`` embeddings of those ``keys`` that are in the store."""
        ...

    def put(self, items: Mapping[Hashable, Any]) -> None:
        """Store each ``key → (D,)`` embedding (replacing what the key held)."""
        ...


class NullStore:
    """A store that keeps nothing: ``get`` finds nothing, ``put`` drops what it is given."""

    def get(self, keys: Sequence[Hashable]) -> dict[Hashable, np.ndarray]:
        """Always ``{}``."""
        return {}

    def put(self, items: Mapping[Hashable, Any]) -> None:
        """Does nothing."""

    def __repr__(self) -> str:
        return "NullStore()"


def encode_through(store: EmbeddingStore, keys: Sequence[Hashable], encode: Callable[[list[int]], Any],
                   batch: int | None = None) -> list[np.ndarray]:
    """What the store puts around an encoder (a tower): look each key up, compute the misses,
    remember them. Every head that encodes through it (image embeddings, label prompts) gets the
    store for free.

    Args:
        store: asked first (``NullStore``: every key is computed).
        keys: one per item; equal keys are computed once.
        encode: item indices → their ``(len(indices), D)`` vectors (NumPy, or anything
            ``np.asarray`` takes); called only for items whose key the store lacks, the first
            item of each distinct key, ``batch`` indices at a time (all at once when ``None``).

    Returns:
        The ``(D,)`` vector of each key, in ``keys`` order.
    """
    found: dict[Hashable, Any] = dict(store.get(list(keys)))
    first: dict[Hashable, int] = {}
    for i, key in enumerate(keys):
        if key not in found:
            first.setdefault(key, i)
    missing = list(first.values())
    step = batch or max(len(missing), 1)
    for start in range(0, len(missing), step):
        rows = missing[start:start + step]
        fresh = dict(zip((keys[i] for i in rows), np.asarray(encode(rows))))
        store.put(fresh)
        found.update(fresh)
    return [found[key] for key in keys]
