"""Embedding store: where a task looks for per-image results before computing them.

- ``interface``: the ``EmbeddingStore`` interface, ``encode_through`` (the store around an encoder: look
  up, compute the misses, remember), ``NullStore`` (stores nothing: ``--no-store``),
  ``TextKey`` (label prompts), ``StoredEmbedding`` / ``StoredImage`` (an image read from the store).
- ``hashing``: BLAKE3 content hashes of files, and the path facts that let an unchanged file skip
  the read.
- ``keys``: ``ModelKey`` (everything an embedding depends on) and the weights' identity.
- ``sqlite``: ``SqliteStore``, one SQLite file (WAL) per model key.
- ``files``: the store folder, ``open_store`` (corrupt files set aside), ``StoreOpener``, and what
  ``wwts store info|prune|clear`` do.
- ``captions``: ``CaptionStore``, captions by content hash + generation settings in a caption
  model's store file.
- ``parquet``: embeddings to Parquet (``wwts embed``; needs pyarrow).
"""

from .interface import (EmbeddingStore, NullStore, StoredCaption, StoredEmbedding, StoredImage, TextKey,
                        encode_through)
from .parquet import ParquetExport, require_pyarrow
from .files import (StoreOpener, clear_stores, default_store_dir, open_store, prune_stores, set_aside,
                    store_files)
from .hashing import content_hash, file_facts
from .keys import ModelKey, model_key, weights_identity
from .sqlite import APPLICATION_ID, SqliteStore, StoreFileError
from .captions import CaptionStore, caption_settings

__all__ = ["EmbeddingStore", "NullStore", "encode_through", "StoredEmbedding", "StoredImage", "TextKey", "content_hash",
           "file_facts", "ModelKey", "model_key", "weights_identity", "SqliteStore", "StoreFileError",
           "APPLICATION_ID", "StoreOpener", "default_store_dir", "open_store", "set_aside",
           "store_files", "prune_stores", "clear_stores", "ParquetExport", "require_pyarrow",
           "CaptionStore", "StoredCaption", "caption_settings"]
