"""Which compute dtype a run uses on its device, and why: the dtype policy.

``--dtype auto`` follows the hardware: CUDA picks bf16 where the GPU computes it natively, else
float16; on a CPU, bf16 is picked only when it was measured to pay on this machine
(``cpu_bf16_calibration``, which wraps ``calibration``: the measurement and its cache). Half
precision is applied with ``autocast``, so norms and softmax stay float32. The dtype names come
from ``config.DTYPES`` (the one list the CLI and ``RunConfig`` check against).
"""

from __future__ import annotations

import contextlib

import torch

from ..config import DTYPES
from ..errors import DeviceError
from . import cpu, cpu_dtype, nvidia
from .cpu_dtype import BF16_MIN_SPEEDUP  # noqa: F401  (exported: hardware.BF16_MIN_SPEEDUP)


#: Explicit dtype names (``config.DTYPES`` less ``"auto"``): ``("float32", "float16", "bfloat16")``.
DTYPE_NAMES: tuple[str, ...] = tuple(name for name in DTYPES if name != "auto")


def cpu_bf16_calibration(batch_size: int = 8, *, refresh: bool = False) -> dict | None:
    """The measured speed of bf16 over float32 on this CPU for the model's kind of work.

    Times one ViT-B/16 encoder block at ``batch_size`` (capped at 8) in both dtypes, at the
    current torch thread count, the first time a machine and setting are seen (about 1 s), and
    caches the result (``calibration``) under a key made of the CPU's model name, a digest of its
    flags, the torch version, the thread count and the batch size.

    Args:
        batch_size: the run's mini-batch size.
        refresh: measure again even when a cached value exists (``wwts doctor --recalibrate``).

    Returns:
        ``{"speedup": float32_s / bfloat16_s, "measured": ISO 8601 UTC time, "float32_s",
        "bfloat16_s", "workload", "key"}``, or ``None`` when it could not be measured.
    """
    return cpu_dtype.bf16_entry(batch_size, torch.get_num_threads(), refresh=refresh)


def cpu_bf16_speedup(batch_size: int = 8, *, refresh: bool = False) -> float | None:
    """``cpu_bf16_calibration(batch_size)["speedup"]`` (ratio; > 1: bf16 faster), or ``None``."""
    entry = cpu_bf16_calibration(batch_size, refresh=refresh)
    return None if entry is None else float(entry["speedup"])


def _autocast_ok(device_type: str) -> bool:
    try:
        return bool(torch.amp.is_autocast_available(device_type))
    except Exception:
        return device_type in ("cpu", "cuda")


def _auto_cpu_dtype(batch_size: int) -> tuple[torch.dtype, str]:
    """``--dtype auto`` on the CPU: bf16 only when native and measured to pay here
    (``cpu_dtype.auto_cpu_dtype``, the torch-free rule, at torch's thread count)."""
    name, why = cpu_dtype.auto_cpu_dtype(batch_size, torch.get_num_threads(), autocast=_autocast_ok("cpu"))
    return getattr(torch, name), why


def _auto_dtype(device: torch.device, batch_size: int = 8) -> tuple[torch.dtype, str]:
    """``--dtype auto``'s choice on ``device`` and its reason in words."""
    if device.type == "cuda":
        ok, why = nvidia.cuda_native_bf16(device.index or 0)
        if ok:
            return torch.bfloat16, f"GPU has native bf16 ({why}): as fast as float16, float32's range"
        return torch.float16, f"GPU lacks native bf16 ({why}); float16 tensor cores"
    if device.type == "xpu":
        try:
            if torch.xpu.is_bf16_supported():
                return torch.bfloat16, "Intel XPU supports bf16"
        except Exception:
            pass
        return torch.float16, "Intel XPU"
    if device.type == "mps":
        return torch.float32, "MPS: float32 unless measured otherwise (half precision is not reliably faster there)"
    if device.type == "cpu":
        return _auto_cpu_dtype(batch_size)
    return torch.float32, cpu_dtype.NO_NATIVE_BF16


def _check_explicit(device: torch.device, requested: str, dtype: torch.dtype) -> None:
    """``DeviceError`` when the explicit half-precision ``dtype`` cannot run on ``device``."""
    if not _autocast_ok(device.type):
        raise DeviceError(f"--dtype {requested} is not usable on {device}: this torch has no autocast for "
                          f"{device.type}; use --dtype float32 or auto")
    if device.type == "cuda" and dtype == torch.bfloat16:
        ok, why = nvidia.cuda_native_bf16(device.index or 0)
        if not ok:
            name = ""
            with contextlib.suppress(Exception):
                name = f" ({torch.cuda.get_device_name(device.index or 0)})"
            raise DeviceError(f"--dtype bfloat16 is not usable on {device}{name}: needs an Ampere or newer GPU "
                              f"(compute capability 8.0+), this one has {why.removeprefix('compute capability ')}; "
                              f"use --dtype float16 or auto")
    if device.type == "cpu" and dtype == torch.float16 and not cpu.cpu_has_native_fp16():
        hint = "bfloat16 (native on this CPU) or float32" if cpu.cpu_has_native_bf16() else "float32 or auto"
        raise DeviceError("--dtype float16 is not usable on cpu: this CPU has no native float16 arithmetic "
                          f"(AVX512-FP16 / AMX-FP16), so CPU autocast would emulate it slowly; use --dtype {hint}")


def select_dtype(device: torch.device, requested: str = "auto", batch_size: int = 8) -> torch.dtype:
    """Compute dtype for ``device``.

    ``auto``: CUDA → bfloat16 where the GPU has native bf16 (compute capability 8.0+, Ampere;
    on ROCm what torch reports), else float16; XPU → bfloat16 where supported, else float16;
    MPS → float32 (unless measured otherwise); CPU → bfloat16 when the CPU has native bf16
    (AVX512-BF16, AMX-BF16 or Arm BF16) and a ViT-B/16 block under bf16 autocast, at the run's
    batch size, measures at least ``BF16_MIN_SPEEDUP`` times float32 here
    (``cpu_bf16_calibration``, cached), else float32. Half precision is applied with ``autocast``
    to both towers, so norms and softmax stay float32.

    Args:
        device: the chosen device.
        requested: ``auto`` or one of ``DTYPE_NAMES`` (a ``torch.dtype`` is accepted).
        batch_size: the run's mini-batch size (the CPU calibration measures at it).

    Returns:
        ``torch.float32``, ``torch.float16`` or ``torch.bfloat16``.

    Raises:
        DeviceError: an explicit dtype the device cannot run: ``bfloat16`` on a CUDA GPU older
            than Ampere, ``float16`` on a CPU without native float16 (AVX512-FP16 / AMX-FP16 /
            Arm FP16), or half precision where torch has no autocast for the device; an unknown
            dtype name.
    """
    if isinstance(requested, torch.dtype):
        requested = str(requested).removeprefix("torch.")
    requested = (requested or "auto").lower()
    if requested == "auto":
        return _auto_dtype(device, batch_size)[0]
    if requested not in DTYPE_NAMES:
        raise DeviceError(f"--dtype {requested}: unknown dtype; valid: auto, {', '.join(DTYPE_NAMES)}")
    dtype = getattr(torch, requested)
    if dtype == torch.float32:
        return dtype
    _check_explicit(device, requested, dtype)
    if device.type == "cpu" and dtype == torch.bfloat16:
        cpu_dtype.warn_emulated_bf16()
    return dtype


def dtype_reason(device: torch.device, dtype: torch.dtype, batch_size: int = 8) -> str:
    """Why ``dtype`` on ``device``: the ``auto`` rule's reason when it matches, else "as requested"."""
    auto, why = _auto_dtype(device, batch_size)
    if dtype == auto:
        return why
    return "as requested (--dtype)"


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast context for ``dtype`` on ``device``: matmuls and convolutions run in ``dtype``.

    On CUDA, softmax, layer norm and losses run in float32 (autocast's float32 op list). On CPU,
    autocast leaves softmax and layer norm in bf16, but torch's CPU kernels for them accumulate in
    float32 (``opmath_type``); callers that turn logits into probabilities should still call
    ``.float()`` first. A no-op context for float32, or where torch has no autocast for the
    device type.
    """
    if dtype == torch.float32 or not _autocast_ok(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
