"""The tower seam: what a task calls to turn pixels or label text into embeddings.

A tower is anything with ``encode(batch) → (B, D)`` float32 rows of L2 norm 1: one tower of a
contrastive dual encoder (CLIP, Chinese-CLIP, SigLIP) run by torch (``torch.TorchTower``), an
OpenVINO compiled model or an ONNX Runtime session (``RuntimeTower``). Tasks score the embeddings
themselves, so every backend gives the same records for the same embeddings. ``LazyTower`` makes a
tower on its first ``encode`` (a run served by the embedding store may never need one).

Every tower says what it is with ``backend`` (``torch``, ``openvino``, ``onnxruntime``), ``tower``
(``image`` / ``text``) and ``store_name``: its name in embedding-store keys, fixed strings that
users' stores already hold (``tower_name``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from ..arrays import as_numpy
from ..hardware import HOST_CPU

if TYPE_CHECKING:  # the OpenVINO / ONNX Runtime towers work without torch
    import torch

#: The class each backend's towers had when store keys first recorded them (``tower_name``).
_STORE_PREFIX = {"torch": "wwts.core.backends.torch.Torch", "openvino": "wwts.core.backends.openvino.OpenVINO",
                 "onnxruntime": "wwts.core.backends.onnxruntime.Onnx"}


@runtime_checkable
class Tower(Protocol):
    """One tower of a dual encoder.

    Attributes:
        device: where the caller puts the inputs (a torch device; ``HOST_CPU`` for the runtimes).
        dtype: compute dtype (``torch.float32`` means full precision; bf16/fp16 autocast
            otherwise; ``"float32"`` for the runtimes, whose ``precision`` says what they compute in).
    """

    device: Any
    dtype: Any

    def encode(self, batch: Any) -> Any:
        """Image tower: ``pixel_values (B, 3, H, W)`` float32. Text tower: a tokenizer output
        (``input_ids (B, T)``, ``attention_mask (B, T)``...). → ``(B, D)`` float32 embeddings
        (a torch tensor or a NumPy array), each row of L2 norm 1."""
        ...


def tower_name(backend: str, tower: str, precision: str | None = None) -> str:
    """A tower's name in store keys: ``wwts.core.backends.torch.TorchImageEncoder``,
    ``wwts.core.backends.openvino.OpenVINOImageEncoder/float32`` (image towers of a runtime add the
    precision it computes in), ``wwts.core.backends.onnxruntime.OnnxTextEncoder``... These strings
    are part of every stored embedding's key: changing one orphans the users' stores.

    Raises:
        KeyError: an unknown backend.
    """
    name = f"{_STORE_PREFIX[backend]}{tower.title()}Encoder"
    return name + (f"/{precision}" if precision else "")


def quantized(encoder: object) -> str | None:
    """``"int8"`` when ``encoder`` (a tower) runs an int8 conversion (its export entry's precision),
    else ``None``: what store keys and the run section say besides the precision it computes in."""
    fields = (getattr(encoder, "manifest", None) or {}).get("fields") or {}
    return "int8" if fields.get("precision") == "int8" else None


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


def numpy_tokens(tokens: Mapping[str, Any], names: Sequence[str]) -> dict[str, np.ndarray]:
    """The token arrays ``names`` of a tokenizer output (NumPy arrays or torch tensors) as int64
    NumPy arrays (what OpenVINO and ONNX Runtime take)."""
    out = {}
    for name in names:
        value = tokens[name]
        value = value.cpu().numpy() if hasattr(value, "cpu") else np.asarray(value)
        out[name] = value.astype(np.int64, copy=False)
    return out


class RuntimeTower:
    """A tower on a runtime (an OpenVINO compiled model, an ONNX Runtime session): NumPy in, NumPy
    out, on the host CPU's memory.

    Args:
        run: named float32 / int64 input arrays → the graph's ``(B, D)`` output (not normalised).
        backend: ``openvino`` or ``onnxruntime``.
        tower: ``image`` (input ``pixel_values (B, 3, H, W)`` float32) or ``text``.
        names: the text graph's token inputs (``input_ids``, ``attention_mask``...), in graph order.
        precision: the dtype the runtime computes in (image towers; ``None``: not said).
        target: the runtime's device (``CPU``, ``GPU.0``; ONNX Runtime's providers).
        manifest: the tower's entry in its export (``export.json``: fields, files, seconds).
    """

    def __init__(self, run: Callable[[dict[str, np.ndarray]], Any], backend: str, tower: str, *,
                 names: Sequence[str] = (), precision: str | None = None, target: str = "",
                 manifest: dict | None = None) -> None:
        self.run, self.backend, self.tower, self.names = run, backend, tower, list(names)
        self.precision = precision if tower == "image" else None
        self.target = target
        self.manifest = manifest or {}
        self.device = HOST_CPU
        self.dtype = "float32"

    @property
    def store_name(self) -> str:
        """The tower's name in store keys (``tower_name``)."""
        return tower_name(self.backend, self.tower, self.precision)

    def encode(self, batch: Any) -> np.ndarray:
        """``pixel_values (B, 3, H, W)`` float32 (NumPy, or a CPU torch tensor) or a tokenizer output
        (NumPy or torch) → ``(B, D)`` float32 NumPy embeddings of L2 norm 1."""
        if self.tower == "image":
            inputs = {"pixel_values": np.ascontiguousarray(as_numpy(batch), dtype=np.float32)}
        else:
            inputs = numpy_tokens(batch, self.names)
        return normalized(self.run(inputs))


class LazyTower:
    """A tower made by ``factory()`` on the first ``encode``: a run whose photos (or labels) all come
    from the embedding store never compiles, opens or loads it. What a run reads before that
    (``backend``, ``tower``, ``precision``, ``store_name``, ``manifest``) is given here.

    Args:
        factory: makes the tower (what it raises propagates from ``encode``; a ``ModelLoadError``
            ends the run).
        backend / tower / precision / manifest: as the made tower will say them.
        store_name: its name in store keys (default: ``tower_name`` of the above).
        device / dtype: where its inputs are made (the host CPU, float32).

    Attributes:
        load_s: seconds the factory took (0 until it ran); the run counts them as model load.
    """

    def __init__(self, factory: Callable[[], Tower], backend: str, tower: str, *, precision: str | None = None,
                 store_name: str | None = None, manifest: dict | None = None, device: Any = HOST_CPU,
                 dtype: Any = "float32") -> None:
        self.factory, self.made = factory, None
        self.backend, self.tower, self.precision = backend, tower, precision
        self.store_name = store_name or tower_name(backend, tower, precision)
        self.manifest = manifest or {}
        self.device, self.dtype = device, dtype
        self.load_s = 0.0

    @property
    def ready(self) -> bool:
        """Whether the tower was made (and not released since)."""
        return self.made is not None

    def get(self) -> Tower:
        """The tower, made now if it was not (what the factory raises propagates)."""
        if self.made is None:
            t0 = time.perf_counter()
            self.made = self.factory()
            self.load_s += time.perf_counter() - t0
        return self.made

    def encode(self, batch: Any) -> Any:
        """The made tower's ``encode`` (``(B, D)`` float32, rows of L2 norm 1)."""
        return self.get().encode(batch)

    def release(self) -> bool:
        """Drop the made tower, so its memory goes back (a float32 BERT-base text tower holds
        ~400 MB once the label features are computed); the next ``encode`` makes it again.
        ``True`` when one was dropped."""
        if self.made is None:
            return False
        self.made = None
        return True
