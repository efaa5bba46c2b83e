"""Which device a run uses, proven by a test operation: the only module that asks torch about
CUDA / MPS / XPU availability.

A device counts as usable only after a small tensor op on it succeeds (``probe``), never just
because ``is_available()`` says so. An explicitly requested device is never silently replaced:
when it cannot be used, ``select_device`` raises ``DeviceError`` with one line saying what was
asked, what is available and how to fix it. Also here: the torch build, default batch sizes per
device, and what to do with an out-of-memory error.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import torch

from ..errors import DeviceError, describe
from . import nvidia
from .choice import DeviceChoice

log = logging.getLogger(__name__)

#: Where to get a torch build for an accelerator (shown in fix-it hints).
TORCH_INSTALL_URL = "https://pytorch.org/get-started/locally/"


# --------------------------------------------------------------------------------------------
# What torch offers
# --------------------------------------------------------------------------------------------


def torch_build() -> str:
    """``"CUDA 12.4"``, ``"ROCm 6.2"`` or ``"CPU-only"``: what this torch wheel was built for."""
    hip = getattr(torch.version, "hip", None)
    if hip:
        return f"ROCm {hip}"
    if torch.version.cuda:
        return f"CUDA {torch.version.cuda}"
    return "CPU-only"


def _cudnn_version() -> str | None:
    """cuDNN's version as ``"9.1.0"`` (torch reports 90100, or 8902 for 8.9.2), ``None`` without it."""
    v = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if not v:
        return None
    if v >= 10000:
        return f"{v // 10000}.{(v // 100) % 100}.{v % 100}"
    return f"{v // 1000}.{(v // 100) % 10}.{v % 100}"


def torch_facts() -> dict[str, Any]:
    """What this torch is: ``{"version", "build" (``torch_build()``), "cuda_runtime", "hip_runtime",
    "cudnn": "9.1.0" | None, "cpu_capability": "AVX512" | None, "error": None}``. A fact torch
    cannot give stays ``None``."""
    t: dict[str, Any] = {"version": torch.__version__, "build": torch_build(), "cuda_runtime": torch.version.cuda,
                         "hip_runtime": getattr(torch.version, "hip", None), "cudnn": None,
                         "cpu_capability": None, "error": None}
    with contextlib.suppress(Exception):
        t["cudnn"] = _cudnn_version()
    with contextlib.suppress(Exception):
        t["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return t


def mps_available() -> bool:
    """True when torch offers Apple MPS here (``torch.backends.mps.is_available()``); never raises.

    Availability only: ``probe`` proves the device works.
    """
    mps = getattr(torch.backends, "mps", None)
    try:
        return bool(mps is not None and mps.is_available())
    except Exception:
        return False


def mps_built() -> bool:
    """True when this torch was built with MPS support (whether or not macOS offers it); never raises."""
    mps = getattr(torch.backends, "mps", None)
    try:
        return bool(mps is not None and mps.is_built())
    except Exception:
        return False


def xpu_available() -> bool:
    """True when torch sees an Intel XPU (``torch.xpu.is_available()``); never raises.

    Availability only: ``probe`` proves the device works.
    """
    xpu = getattr(torch, "xpu", None)
    try:
        return bool(xpu is not None and xpu.is_available())
    except Exception:
        return False


def xpu_devices() -> list[dict]:
    """``[{"index", "name"}]`` for each Intel XPU torch sees; empty when none or when asking fails."""
    if not xpu_available():
        return []
    with contextlib.suppress(Exception):
        return [{"index": i, "name": torch.xpu.get_device_name(i)} for i in range(torch.xpu.device_count())]
    return []


def available_summary() -> str:
    """One line naming the accelerators torch can see, for error messages. Never raises."""
    parts = []
    try:
        cuda_ok = torch.cuda.is_available()
        count = torch.cuda.device_count() if cuda_ok else 0
    except Exception as exc:
        cuda_ok, count = False, 0
        parts.append(f"no cuda ({describe(exc)})")
    else:
        if cuda_ok:
            parts.append(f"cuda:0..cuda:{count - 1}" if count > 1 else "cuda:0")
        elif torch_build() == "CPU-only":
            parts.append("no cuda (this torch is a CPU-only build)")
        else:
            parts.append("no cuda device visible")
    parts.append("mps" if mps_available() else "no mps")
    if xpu_available():
        parts.append("xpu")
    parts.append("cpu")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Choosing and proving a device
# --------------------------------------------------------------------------------------------


def probe(device: torch.device) -> str | None:
    """Prove ``device`` works with a tiny matmul and a copy back to the host.

    Returns:
        ``None`` when the device works, else the reason it does not (one line).
    """
    try:
        x = torch.arange(16, dtype=torch.float32, device=device).reshape(4, 4)
        y = (x @ x).sum().item()
        # sum(A @ A) = sum_k colsum_k(A) * rowsum_k(A) = 24*6 + 28*22 + 32*38 + 36*54 = 3920,
        # exact in float32 (every partial sum is an integer below 2**24).
        if y != 3920.0:
            return f"wrong result from a test matmul on {device}: {y}"
        return None
    except Exception as exc:  # any failure means "not usable": driver, arch, OOM...
        return describe(exc)


def _cuda_candidates(tried: list[tuple[str, str]]) -> list[torch.device]:
    """Visible CUDA (or ROCm) devices, most free memory first; query failures go to ``tried``."""
    try:
        if not torch.cuda.is_available():
            return []
        count = torch.cuda.device_count()
    except Exception as exc:  # a broken driver can make even these raise
        tried.append(("cuda", describe(exc)))
        return []
    if count <= 1:
        return [torch.device("cuda", 0)] if count == 1 else []
    try:
        free = nvidia.cuda_free_memory()
    except Exception as exc:
        log.debug("cannot read free GPU memory: %s", exc)
        free = {}
    order = sorted(range(count), key=lambda i: (-free.get(i, 0), i))  # ties keep index order
    return [torch.device("cuda", i) for i in order]


def _select_auto() -> DeviceChoice:
    """``--device auto``: the first candidate (CUDA by free memory, MPS, XPU) that passes ``probe``."""
    tried: list[tuple[str, str]] = []
    candidates = _cuda_candidates(tried)
    n_cuda = len(candidates)
    if mps_available():
        candidates.append(torch.device("mps"))
    if xpu_available():
        candidates.append(torch.device("xpu"))
    for rank, dev in enumerate(candidates):
        reason = probe(dev)
        if reason is None:
            if dev.type == "cuda" and n_cuda == 1:
                why = "the only CUDA GPU"
            elif dev.type == "cuda":
                why = (f"the CUDA GPU with the most free memory of {n_cuda}" if rank == 0
                       else "the CUDA GPU with the most free memory that passed its test")
            else:
                why = {"mps": "Apple MPS (no usable CUDA GPU)",
                       "xpu": "Intel XPU (no usable CUDA GPU or MPS)"}[dev.type]
            return DeviceChoice(dev, True, tried, why)
        log.warning("device %s failed its probe (%s); trying the next one", dev, reason)
        tried.append((str(dev), reason))
    why = "no usable CUDA, MPS or XPU device" if not tried else "every accelerator failed its test"
    return DeviceChoice(torch.device("cpu"), True, tried, why)


def _cuda_fix_hint() -> str:
    if torch_build() == "CPU-only":
        gpus = nvidia.nvidia_driver_facts()["gpus"]
        seen = f"an NVIDIA GPU is present ({gpus[0]['name']}) but " if gpus else ""
        return (f"{seen}this torch is a CPU-only build: install a CUDA build of torch "
                f"({TORCH_INSTALL_URL}) or use --device auto")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU: unset it or use --device auto"
    return "torch sees no CUDA GPU: check the driver with nvidia-smi, or use --device auto"


def _explicit_cuda(dev: torch.device, requested: str) -> torch.device:
    """The CUDA device ``--device cuda[:N]`` names, or ``DeviceError`` saying why it cannot be."""
    try:
        ok = torch.cuda.is_available()
        count = torch.cuda.device_count() if ok else 0
    except Exception as exc:
        raise DeviceError(f"--device {requested} is not usable: CUDA fails to start ({describe(exc)}): "
                          f"check the driver with nvidia-smi or use --device cpu") from None
    if not ok or count == 0:
        raise DeviceError(f"--device {requested} is not usable: {_cuda_fix_hint()}. "
                          f"Available: {available_summary()}")
    index = dev.index if dev.index is not None else 0
    if index >= count:
        names = "cuda:0" if count == 1 else f"cuda:0..cuda:{count - 1}"
        raise DeviceError(f"--device {requested} is not usable: only {count} CUDA device(s) ({names}); "
                          f"pick one of them or use --device auto. Available: {available_summary()}")
    return torch.device("cuda", index)


def _check_mps_xpu(dev: torch.device, requested: str) -> None:
    """``DeviceError`` when ``--device mps`` / ``xpu`` is not offered here or the type is unknown."""
    if dev.type == "mps":
        if not mps_available():
            why = ("this torch has MPS but macOS does not offer it (needs macOS 12.3+ on Apple silicon)"
                   if mps_built() else
                   "Apple MPS needs an Apple-silicon Mac with macOS 12.3+ and an arm64 build of torch")
            raise DeviceError(f"--device {requested} is not usable: {why}; use --device auto or --device cpu. "
                              f"Available: {available_summary()}")
    elif dev.type == "xpu":
        if not xpu_available():
            raise DeviceError(f"--device {requested} is not usable: torch sees no Intel XPU (needs an XPU build of "
                              f"torch and Intel GPU drivers, {TORCH_INSTALL_URL}). Available: {available_summary()}")
    else:
        raise DeviceError(f"--device {requested}: unsupported device type {dev.type!r}; valid: auto, cpu, cuda, "
                          f"cuda:N, mps, xpu. Available: {available_summary()}")


def select_device(requested: str = "auto") -> DeviceChoice:
    """Pick and prove a device.

    ``auto`` tries CUDA (the GPU with the most free memory first), then Apple MPS, then Intel
    XPU, then CPU; a candidate counts only after ``probe`` succeeds on it; failed probes are logged
    and the next candidate is tried. An explicit device is probed too, but never replaced.
    ``CUDA_VISIBLE_DEVICES`` is honoured and never rewritten (unlike ultralytics'
    ``select_device``, whose docstring shape and habit of naming what is available this follows).

    Args:
        requested: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``xpu[:N]``.

    Returns:
        A ``DeviceChoice``.

    Raises:
        DeviceError: an explicit device is absent or fails its probe; the one-line message says
            what was asked, what is available, and how to fix it.
    """
    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        return _select_auto()
    try:
        dev = torch.device(requested)
    except (RuntimeError, ValueError):
        raise DeviceError(f"--device {requested}: unknown device; valid: auto, cpu, cuda, cuda:N, mps, xpu. "
                          f"Available here: {available_summary()}") from None
    if dev.type == "cpu":
        return DeviceChoice(torch.device("cpu"), False, [], "--device cpu")
    if dev.type == "cuda":
        dev = _explicit_cuda(dev, requested)
    else:
        _check_mps_xpu(dev, requested)
    reason = probe(dev)
    if reason is not None:
        raise DeviceError(f"--device {requested} failed a test operation ({reason}). "
                          f"Available: {available_summary()}; try --device auto or --device cpu")
    return DeviceChoice(dev, False, [], f"--device {requested}")


# --------------------------------------------------------------------------------------------
# Batch sizes and out-of-memory
# --------------------------------------------------------------------------------------------

#: Default mini-batch sizes per device type and task. CPU: a batch of 8 already reaches the matmul
#: peak for ViT-B/16 at 224 px (DESIGN.md measurements); GPUs take larger batches and back off on OOM.
def is_oom_error(exc: BaseException) -> bool:
    """True for out-of-memory errors on CUDA, MPS, XPU or the CPU allocator."""
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if isinstance(t, type))
    if oom_types and isinstance(exc, oom_types):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


def empty_cache(device: torch.device) -> None:
    """Release cached allocator memory on ``device`` after an OOM (no-op on CPU)."""
    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        elif device.type == "mps":
            torch.mps.empty_cache()
        elif device.type == "xpu":
            torch.xpu.empty_cache()
    except Exception:
        pass
