"""Arrays at the seams: model outputs come as NumPy arrays (OpenVINO, ONNX Runtime, the store) or as
torch tensors (the torch backend); scoring, label features and the store work on NumPy. Dtypes come
as ``torch.dtype`` or as names; ``dtype_name`` is how wwts writes either.

This module must not import torch: a run on OpenVINO or ONNX Runtime never loads it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_numpy(values: Any) -> np.ndarray:
    """``values`` as a float32 NumPy array on the CPU (a copy only when needed).

    Takes NumPy arrays, sequences of numbers and torch tensors on any device and in any dtype
    (detached, converted to float32, copied to the CPU) without importing torch. Integer arrays
    keep their dtype.
    """
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # a torch tensor
        values = values.detach()
        if values.is_floating_point():
            values = values.float()
        return values.cpu().numpy()
    array = np.asarray(values)
    if array.dtype.kind == "f" and array.dtype != np.float32:
        return array.astype(np.float32)
    return array


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` (or the string ``"bfloat16"``) → ``"bfloat16"``: the name records, the
    store key and messages use, without importing torch."""
    return str(dtype).removeprefix("torch.")
