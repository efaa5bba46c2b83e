"""The encoder seam: what a task calls to turn pixels or label text into embeddings.

A backend runs one tower of a contrastive dual encoder (CLIP, Chinese-CLIP, SigLIP) on a batch and
returns L2-normalised float32 embeddings, whatever runs it (a torch module on a device today; an
OpenVINO compiled model or an ONNX Runtime session later). Tasks score those embeddings themselves,
so every backend gives the same records for the same embeddings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Protocol, runtime_checkable

import numpy as np

from ..hardware import HOST_CPU

if TYPE_CHECKING:  # the OpenVINO / ONNX Runtime encoders work without torch
    import torch


@runtime_checkable
class ImageEncoder(Protocol):
    """Image tower of a dual encoder.

    Attributes:
        device: where the encoder computes (inputs are moved there by the caller).
        dtype: compute dtype (``torch.float32`` means full precision; bf16/fp16 autocast otherwise).
    """

    device: torch.device
    dtype: torch.dtype

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values (B, 3, H, W)`` float32 → ``(B, D)`` float32 embeddings, each row of L2 norm 1."""
        ...


@runtime_checkable
class TextEncoder(Protocol):
    """Text tower of a dual encoder.

    Attributes:
        device: where the encoder computes.
        dtype: compute dtype.
    """

    device: torch.device
    dtype: torch.dtype

    def encode(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Tokenizer output (``input_ids (L, T)``, ``attention_mask (L, T)``...) → ``(L, D)`` float32
        embeddings, each row of L2 norm 1."""
        ...


def l2_normalize(features: torch.Tensor) -> torch.Tensor:
    """``features (N, D)`` as float32 rows of L2 norm 1 (computed outside autocast, in float32)."""
    import torch

    with torch.autocast(device_type=features.device.type, enabled=False):
        features = features.float()
        return features / features.norm(dim=-1, keepdim=True)


def normalized(features: Any) -> np.ndarray:
    """``features (N, D)`` (a runtime's output) as a float32 NumPy array whose rows have L2 norm 1
    (norms computed in float64, so a bf16 runtime's output is normalised without loss). A zero row
    stays zero-divided (NaN): the task turns it into a ``nonfinite`` error record."""
    x = np.asarray(features, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x / np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)).astype(np.float32)


def numpy_tokens(tokens: Mapping[str, Any], names: list[str]) -> dict[str, np.ndarray]:
    """The token arrays ``names`` of a tokenizer output (NumPy arrays or torch tensors) as int64
    NumPy arrays (what OpenVINO and ONNX Runtime take)."""
    out = {}
    for name in names:
        value = tokens[name]
        value = value.cpu().numpy() if hasattr(value, "cpu") else np.asarray(value)
        out[name] = value.astype(np.int64, copy=False)
    return out


class Deferred:
    """A runtime object (an OpenVINO compiled model, an ONNX Runtime session) made on first use.

    ``Deferred(obj)`` holds one made already; ``Deferred(None, factory)`` calls ``factory()`` the
    first time ``get`` is called (a run whose photos and labels all come from the embedding store
    never compiles a tower)."""

    def __init__(self, value: Any = None, factory: Any = None) -> None:
        if value is None and factory is None:
            raise ValueError("Deferred needs a value or a factory")
        self.value, self.factory = value, factory

    @property
    def ready(self) -> bool:
        """Whether the object exists (was given, or ``get`` made it)."""
        return self.value is not None

    def get(self) -> Any:
        """The object, made now if it was deferred (what the factory raises propagates)."""
        if self.value is None:
            self.value = self.factory()
        return self.value

    def release(self) -> bool:
        """Drop the object when the factory can make it again (its memory goes back: a compiled
        400 MB text tower once the label features are computed); ``True`` when one was dropped."""
        if self.factory is None or self.value is None:
            return False
        self.value = None
        return True


class RuntimeTextEncoder:
    """What the OpenVINO and ONNX Runtime text encoders share: the runtime object (a compiled model,
    a session) made now or on the first ``encode`` (``Deferred``), the token input names, the
    conversion manifest, inputs made on the CPU in float32, and ``release``. A subclass gives
    ``encode``.

    Args:
        value: the runtime object, or ``None`` with ``factory``, which makes it on first use (a run
            whose label features are all in the store never makes it).
        names: the tokenizer outputs the graph takes (``input_ids``, ``attention_mask``...).
        manifest: the conversion cache manifest of the model in use.
    """

    def __init__(self, value: Any, names: list[str], manifest: dict | None = None, *,
                 factory: Any = None) -> None:
        self.runtime = Deferred(value, factory)
        self.names = names
        self.manifest = manifest or {}
        self.device = HOST_CPU
        self.dtype = "float32"

    def release(self) -> bool:
        """Free the runtime object (made again on the next ``encode``): the label features are
        computed once per run, and a float32 BERT-base text tower holds ~400 MB."""
        return self.runtime.release()

