"""How a dual-encoder task uses the embedding store (``core.store``): its model key, its label
prompt features and its image embeddings, each read from the store first and computed only when
missing.

- ``store_parts``: what decides an image embedding besides the weights: model type, dtype,
  quantization, the image encoder's backend class, the image processor's whole configuration
  (input size, resize / crop / normalisation) and wwts' decode-recipe version.
- ``prompt_features``: ``(P, D)`` text features of the prompts, keyed by ``TextKey(prompt, label,
  tokenizer settings)``: a label list is encoded once per machine, not once per run.
- ``image_embeddings``: ``(B, D)`` image embeddings from pixels and / or embeddings the engine
  already read from the store; each distinct content key is encoded at most once.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Hashable, Sequence

import numpy as np

from ..arrays import as_numpy, dtype_name
from ..backends import quantized
from ..input import DECODE_RECIPE
from ..store import TextKey, encode_through


def encoder_name(encoder: Any) -> str:
    """A tower's name in store keys: its ``store_name`` (``backends.tower_name``: e.g.
    ``wwts.core.backends.openvino.OpenVINOImageEncoder/float32``, the names wwts' stores already
    hold); for an object without one, its class and the precision it says it computes in."""
    named = getattr(encoder, "store_name", None)
    if named:
        return str(named)
    cls = type(encoder)
    precision = getattr(encoder, "precision", None)
    return f"{cls.__module__}.{cls.__qualname__}" + (f"/{precision}" if precision else "")


def processor_recipe(processor: Any) -> dict[str, Any]:
    """An image processor's whole configuration (its ``to_dict()``), JSON-ready: input size,
    resize / crop / normalisation. A processor without ``to_dict``: its attributes, as text."""
    try:
        return processor.to_dict()
    except Exception:
        return {k: str(v) for k, v in sorted(vars(processor).items()) if not k.startswith("_")}


def store_parts(task: Any) -> dict[str, Any]:
    """The model-key parts of a dual-encoder task on its current device and dtype (the opener adds
    the weights' identity). JSON-ready: the task's ``dtype``, ``config``, ``image_encoder`` and its
    ``encoder``'s facts (``model_type``, ``image_recipe``: ``processor_recipe`` of its image
    processor) and run's ``image_size`` (``--image-size``, else the model's), so a
    transformers-loaded model and its saved export build the same key; ``pixels: fast-1`` unless
    ``--exact-pixels`` (the exact recipe keeps the keys stores made before the fast one)."""
    facts = task.encoder.facts
    # an int8 conversion that --backend auto chose keys like --quantize int8: precisions never mix
    quantize = task.config.quantize if task.config.quantize == "int8" else quantized(task.image_encoder)
    parts = {"model_type": task.encoder.model_type, "dtype": dtype_name(task.dtype),
             "quantize": quantize, "backend": encoder_name(task.image_encoder),
             "input_size": task.encoder.image_size,
             "preprocess": facts["image_recipe"], "decode_recipe": DECODE_RECIPE}
    if not task.config.exact_pixels:  # the fast resize and 1x draft: other pixels, another store
        parts["pixels"] = "fast-1"
    return parts


def text_settings(task: Any) -> str:
    """What besides the prompt changes a prompt's text features: the text encoder, its token limit
    and SigLIP's fixed padding (the tokenizer itself is part of the model's identity)."""
    return json.dumps({"encoder": encoder_name(task.text_encoder), "max_length": task.encoder.facts.get("text_max_length"),
                       "siglip": bool(task.encoder.quirks["text_padding"])}, sort_keys=True)


def prompt_features(task: Any, tokens: dict[str, Any], labels: Sequence[str], batch: int) -> np.ndarray:
    """``(P, D)`` float32 L2-normalised features of ``task.prompts`` (a NumPy array).

    Args:
        task: the classify task (``prompts``, ``store``, ``text_encoder``).
        tokens: the tokenizer's output for all P prompts (``input_ids (P, T)``, ...).
        labels: the label each prompt was made from (part of its ``TextKey``).
        batch: most prompts per text-tower forward pass.

    The prompts go through the store around the text tower (``store.encode_through``): those it
    holds are not encoded; the others are encoded ``batch`` at a time and put.
    """
    settings = text_settings(task)
    keys = [TextKey(prompt, label, settings) for prompt, label in zip(task.prompts, labels)]
    if not keys:
        return np.empty((0, 0), dtype=np.float32)
    feats = encode_through(task.store, keys, batch=batch, encode=lambda rows: as_numpy(
        task.text_encoder.encode({k: v[rows] for k, v in tokens.items()})))
    return np.stack(feats).astype(np.float32, copy=False)


def image_embeddings(task: Any, pixel_values: Any, keys: Sequence[Hashable] | None,
                     stored: Sequence[np.ndarray | None] | None) -> np.ndarray:
    """``(B, D)`` float32 L2-normalised image embeddings (a NumPy array on the CPU, whatever
    device the encoder ran on: scoring is a ``(B, D) @ (D, L)`` product, cheap anywhere).

    Args:
        pixel_values: ``(M, 3, S, S)`` (a torch tensor or a NumPy array: what the task's
            ``collate`` gives): the images given as pixels, in order (``None`` when M = 0).
        keys: B content keys, or ``None`` (no store lookups).
        stored: B entries: ``None`` for an image given as a row of ``pixel_values``, else its
            ``(D,)`` embedding, read from the store before decoding; ``None``: all B are pixels.

    The images given as pixels go through the store around the image tower
    (``store.encode_through``: another batch or process may have stored them since); the rest are
    encoded, one row per distinct key, and put.
    """
    if stored is None and keys is None:
        return as_numpy(task.image_encoder.encode(pixel_values))
    count = len(stored) if stored is not None else pixel_values.shape[0]
    rows = [i for i in range(count) if stored is None or stored[i] is None]
    out: dict[int, np.ndarray] = {i: s for i, s in enumerate(stored or []) if s is not None}
    if rows and keys is None:
        out.update(zip(rows, as_numpy(task.image_encoder.encode(pixel_values))))
    elif rows:  # pixel_values row j is image rows[j]; each distinct key is encoded once
        def encode(index: list[int]) -> np.ndarray:
            return as_numpy(task.image_encoder.encode(pixel_values if len(index) == len(rows) else pixel_values[index]))

        out.update(zip(rows, encode_through(task.store, [keys[i] for i in rows], encode)))
    return np.stack([out[i] for i in range(count)]).astype(np.float32, copy=False)


def collate_stored(items: list[Any], stored_type: type, concat: Callable[[list[Any]], Any]) -> dict[str, Any]:
    """B items, each ``pixel_values (1, 3, S, S)`` or a ``stored_type`` (an embedding read from the
    store) → ``{"pixel_values": (M, 3, S, S) or None, "stored": B entries}`` (``stored`` only
    when some item is one). ``concat`` joins the pixel items (``torch.cat``, ``np.concatenate``)."""
    pixels = [item for item in items if not isinstance(item, stored_type)]
    out: dict[str, Any] = {"pixel_values": concat(pixels) if pixels else None}
    if len(pixels) < len(items):
        out["stored"] = [item.vector if isinstance(item, stored_type) else None for item in items]
    return out
