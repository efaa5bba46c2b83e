"""Device, dtype and thread choice: the only module that asks torch about CUDA / MPS / XPU.

A device counts as usable only after a small tensor op on it succeeds (``probe``), never just
because ``is_available()`` says so.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from wwts.core.errors import DeviceError

log = logging.getLogger(__name__)


def probe(device: torch.device) -> str | None:
    """Prove ``device`` works with a tiny matmul and a copy back to the host.

    Returns:
        ``None`` when the device works, else the reason it does not (one line).
    """
    try:
        x = torch.arange(16, dtype=torch.float32, device=device).reshape(4, 4)
        y = (x @ x).sum().item()
        if y != 7440.0:  # sum of arange(16).reshape(4,4) squared as a matrix product
            return f"wrong result from a test matmul on {device}: {y}"
        return None
    except Exception as exc:  # any failure means "not usable": driver, arch, OOM...
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def _cuda_candidates() -> list[torch.device]:
    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    free = []
    for i in range(count):
        try:
            free.append((torch.cuda.mem_get_info(i)[0], i))
        except Exception:
            free.append((0, i))
    # Most free memory first; ties keep index order.
    free.sort(key=lambda t: (-t[0], t[1]))
    return [torch.device("cuda", i) for _, i in free]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _xpu_available() -> bool:
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def available_summary() -> str:
    """One line naming the accelerators torch can see, for error messages."""
    parts = []
    if torch.cuda.is_available():
        parts.append(f"cuda (x{torch.cuda.device_count()})")
    elif torch.version.cuda is None and torch.version.hip is None:
        parts.append("no cuda (this torch is a CPU-only build)")
    else:
        parts.append("no cuda device visible")
    parts.append("mps" if _mps_available() else "no mps")
    if _xpu_available():
        parts.append("xpu")
    parts.append("cpu")
    return ", ".join(parts)


@dataclass
class DeviceChoice:
    """The chosen device and how it was chosen.

    Attributes:
        device: the proven ``torch.device``.
        auto: True when picked by ``--device auto``.
        tried: ``(device, reason)`` for each candidate whose probe failed before this one.
    """

    device: torch.device
    auto: bool
    tried: list[tuple[str, str]]


def select_device(requested: str = "auto") -> DeviceChoice:
    """Pick and prove a device.

    ``auto`` tries CUDA (the GPU with the most free memory first), then Apple MPS, then Intel
    XPU, then CPU; a candidate counts only after ``probe`` succeeds on it; failed probes are logged
    and the next candidate is tried. An explicit device is probed too, but never replaced.

    Args:
        requested: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``xpu[:N]``.

    Returns:
        A ``DeviceChoice``.

    Raises:
        DeviceError: an explicit device is absent or fails its probe; the message says what was
            asked, what is available, and how to fix it.
    """
    if requested == "auto":
        tried: list[tuple[str, str]] = []
        candidates = _cuda_candidates()
        if _mps_available():
            candidates.append(torch.device("mps"))
        if _xpu_available():
            candidates.append(torch.device("xpu"))
        for dev in candidates:
            reason = probe(dev)
            if reason is None:
                return DeviceChoice(dev, True, tried)
            log.warning("device %s failed its probe (%s); trying the next one", dev, reason)
            tried.append((str(dev), reason))
        return DeviceChoice(torch.device("cpu"), True, tried)

    dev = torch.device(requested)
    hint = ""
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None and torch.version.hip is None:
                hint = ("this torch is a CPU-only build; install a CUDA build of torch "
                        "(https://pytorch.org/get-started/locally/) or use --device auto")
            else:
                hint = "no CUDA GPU is visible (check the driver with nvidia-smi) or use --device auto"
            raise DeviceError(f"--device {requested} is not usable: {hint}. Available: {available_summary()}")
        index = dev.index if dev.index is not None else 0
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"--device {requested} is not usable: only {count} CUDA device(s) "
                              f"(cuda:0..cuda:{count - 1}). Available: {available_summary()}")
        dev = torch.device("cuda", index)
    elif dev.type == "mps" and not _mps_available():
        raise DeviceError(f"--device {requested} is not usable: Apple MPS needs an Apple-silicon Mac "
                          f"with macOS 12.3+ and an arm64 build of torch. Available: {available_summary()}")
    elif dev.type == "xpu" and not _xpu_available():
        raise DeviceError(f"--device {requested} is not usable: torch sees no Intel XPU. "
                          f"Available: {available_summary()}")
    reason = probe(dev)
    if reason is not None:
        raise DeviceError(f"--device {requested} failed a test operation ({reason}). "
                          f"Available: {available_summary()}; try --device auto or --device cpu")
    return DeviceChoice(dev, False, [])


def cpu_has_native_bf16() -> bool:
    """True when the CPU has native bf16 matmul (x86 AVX512-BF16 or AMX-BF16; Arm BF16/SVE)."""
    try:
        import cpuinfo  # py-cpuinfo

        flags = set(cpuinfo.get_cpu_info().get("flags", []))
    except Exception:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def select_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """Compute dtype for ``device``.

    ``auto``: CUDA → bfloat16 where the GPU supports it (compute capability 8.0+), else float16;
    MPS → float32; CPU → bfloat16 when the CPU has native bf16 (AVX512-BF16 or AMX), else float32.
    An explicit dtype is returned as is.

    Raises:
        DeviceError: ``float16``/``bfloat16`` requested where the device cannot run it.
    """
    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cuda":
        try:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        except Exception:
            return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def physical_cores() -> int:
    """Physical CPU cores (psutil), falling back to the logical count."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:
        n = None
    return n or os.cpu_count() or 1


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads and return the number used.

    Order: ``threads`` if given, else ``OMP_NUM_THREADS`` if the user exported it, else the
    physical core count. Inter-op threads are set to 1 (wwts runs one forward at a time).
    Environment variables are read, never written.
    """
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else physical_cores()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # may only be set once per process, before parallel work starts
        pass
    return threads


#: Default mini-batch sizes per device type and task. CPU: a batch of 8 already reaches the matmul
#: peak for ViT-B/16 at 224 px (DESIGN.md measurements); GPUs take larger batches and back off on OOM.
DEFAULT_BATCH_SIZES = {
    ("cpu", "classify"): 8, ("cpu", "caption"): 8,
    ("cuda", "classify"): 64, ("cuda", "caption"): 32,
    ("mps", "classify"): 32, ("mps", "caption"): 8,
    ("xpu", "classify"): 32, ("xpu", "caption"): 16,
}


def default_batch_size(device: torch.device, task: str) -> int:
    """Mini-batch size for ``task`` on ``device`` when the user gave none."""
    return DEFAULT_BATCH_SIZES.get((device.type, task), 8)


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast context for ``dtype`` on ``device`` (norms and softmax stay float32).

    A no-op context for float32.
    """
    import contextlib

    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def is_oom_error(exc: BaseException) -> bool:
    """True for out-of-memory errors on CUDA, MPS or XPU."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def empty_cache(device: torch.device) -> None:
    """Release cached allocator memory on ``device`` after an OOM (no-op on CPU)."""
    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        elif device.type == "mps":
            torch.mps.empty_cache()
    except Exception:
        pass
