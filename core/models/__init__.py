"""Model registry, hub access and loading."""

from .loader import (ModelSpec, DEFAULT_MODELS, LOCAL_COPY_HINT, OFFLINE_HINT, hub_hint, offline_message, default_model, parse_model_name, hub_cache_dir, cached_snapshot, download, resolve, load_config, weights_format, load, quantize_int8)

__all__ = ['ModelSpec', 'DEFAULT_MODELS', 'LOCAL_COPY_HINT', 'OFFLINE_HINT', 'hub_hint', 'offline_message', 'default_model', 'parse_model_name', 'hub_cache_dir', 'cached_snapshot', 'download', 'resolve', 'load_config', 'weights_format', 'load', 'quantize_int8']
