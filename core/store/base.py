"""The store seam: embeddings kept by key, asked for before an encoder computes them.

A key names one image's content for one model (the SQLite store of a later issue keys by content
hash + model); values are ``(D,)`` float32 CPU tensors, L2-normalised as the encoder gave them.
``NullStore`` keeps nothing, so a task that asks it always computes: the behaviour of a run
without a store. This module imports nothing from the rest of wwts (the store is a leaf).
"""

from __future__ import annotations

from typing import Hashable, Mapping, Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class EmbeddingStore(Protocol):
    """Embeddings by key.

    ``get(keys)`` returns the embeddings it holds for some of ``keys`` (missing keys are simply
    absent from the result; never an error); ``put(items)`` stores ``key → (D,) tensor`` pairs.
    """

    def get(self, keys: Sequence[Hashable]) -> dict[Hashable, torch.Tensor]:
        """The stored ``(D,)`` embeddings of those ``keys`` that are in the store."""
        ...

    def put(self, items: Mapping[Hashable, torch.Tensor]) -> None:
        """Store each ``key → (D,)`` embedding (replacing what the key held)."""
        ...


class NullStore:
    """A store that keeps nothing: ``get`` finds nothing, ``put`` drops what it is given."""

    def get(self, keys: Sequence[Hashable]) -> dict[Hashable, torch.Tensor]:
        """Always ``{}``."""
        return {}

    def put(self, items: Mapping[Hashable, torch.Tensor]) -> None:
        """Does nothing."""

    def __repr__(self) -> str:
        return "NullStore()"
