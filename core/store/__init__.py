"""Embedding store: where a task looks for per-image results before computing them.

- ``base``: the ``EmbeddingStore`` interface and ``NullStore`` (stores nothing: the default).
"""

from .base import EmbeddingStore, NullStore

__all__ = ["EmbeddingStore", "NullStore"]
