"""Device, dtype and thread choice: the only module that asks torch about CUDA / MPS / XPU.

A device counts as usable only after a small tensor op on it succeeds (``probe``), never just
because ``is_available()`` says so. An explicitly requested device is never silently replaced:
when it cannot be used, ``select_device`` raises ``DeviceError`` with one line saying what was
asked, what is available and how to fix it.

Hardware facts that ``wwts doctor`` shows (CPU instruction sets, usable CPUs, NVIDIA GPUs seen by
the driver through NVML or ``nvidia-smi``) live here too, so that one module owns every question
asked of the hardware. Environment variables are read, never written (``core.env`` is the one
place that sets a default before torch is imported).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wwts.core.errors import DeviceError, describe

log = logging.getLogger(__name__)

#: Where to get a torch build for an accelerator (shown in fix-it hints).
TORCH_INSTALL_URL = "https://pytorch.org/get-started/locally/"


# --------------------------------------------------------------------------------------------
# CPU facts
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _cpu_info() -> tuple[str, frozenset[str]]:
    """``(model name, lower-case ISA flags)``, read once per process.

    On Linux the ``model name`` and ``flags`` (x86) or ``Features`` (Arm) lines of /proc/cpuinfo
    are read directly (instant); elsewhere py-cpuinfo is asked (about a second: it runs a
    subprocess). Unknown facts come back as ``""`` / an empty set, never as an error.
    """
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and not name:
                    name = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.lower().split())
                if name and flags:
                    break
    except OSError:
        pass
    if not name or not flags:
        try:
            import cpuinfo  # py-cpuinfo

            info = cpuinfo.get_cpu_info()
            name = name or str(info.get("brand_raw") or "")
            flags = flags or {str(f).lower() for f in info.get("flags", [])}
        except Exception as exc:  # py-cpuinfo absent or failing: report what we have
            log.debug("py-cpuinfo failed: %s", exc)
    return name or platform.processor() or platform.machine(), frozenset(flags)


def cpu_model_name() -> str:
    """Marketing name of the CPU (``"Intel(R) Xeon(R) Platinum 8480+"``), ``""`` if unknown."""
    return _cpu_info()[0]


def cpu_flags() -> frozenset[str]:
    """Lower-case ISA flags as the OS names them (``avx2``, ``avx512_bf16``, ``amx_bf16``, ``asimd``...)."""
    return _cpu_info()[1]


def _is_arm() -> bool:
    return platform.machine().lower() in ("arm64", "aarch64", "armv8l", "armv8b")


#: The instruction sets that matter for CPU inference, with the OS flag names that mean them.
#: x86 names are Linux /proc/cpuinfo's (also py-cpuinfo's); Arm names are the kernel's HWCAPs.
CPU_FEATURES: dict[str, tuple[str, ...]] = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "AVX512-VNNI": ("avx512_vnni", "avx512vnni"),
    "AVX-VNNI": ("avx_vnni",),
    "AVX512-BF16": ("avx512_bf16",),
    "AVX512-FP16": ("avx512_fp16",),
    "AMX-BF16": ("amx_bf16",),
    "AMX-INT8": ("amx_int8",),
    "AMX-FP16": ("amx_fp16",),
    "NEON": ("asimd", "neon"),
    "Arm BF16": ("bf16",),
    "Arm I8MM": ("i8mm",),
    "SVE": ("sve",),
}


def cpu_features(flags: frozenset[str] | None = None) -> dict[str, bool]:
    """Which of ``CPU_FEATURES`` this CPU has, e.g. ``{"AVX2": True, "AMX-BF16": False, ...}``.

    Only the features of the machine's family are listed (x86 or Arm). On Apple silicon, where
    no flag list is exposed, NEON is reported present (every arm64 core has it).
    """
    flags = cpu_flags() if flags is None else flags
    arm = _is_arm()
    out = {}
    for name, aliases in CPU_FEATURES.items():
        is_arm_feature = name in ("NEON", "Arm BF16", "Arm I8MM", "SVE")
        if is_arm_feature != arm:
            continue
        out[name] = any(a in flags for a in aliases)
    if arm and platform.system() == "Darwin":
        out["NEON"] = True
    return out


def cpu_has_native_bf16() -> bool:
    """True when the CPU has native bf16 matmul (x86 AVX512-BF16 or AMX-BF16; Arm BF16).

    Without it torch still computes in bfloat16, but by converting to float32, which is slower
    than float32 itself.
    """
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_native_fp16() -> bool:
    """True when the CPU has native float16 arithmetic (x86 AVX512-FP16 or AMX-FP16; Arm FP16)."""
    return bool(cpu_flags() & {"avx512_fp16", "amx_fp16", "asimdhp"})


def _cgroup_cpu_limit() -> float | None:
    """CPUs granted by a cgroup quota (``docker --cpus``), or ``None`` when unlimited/unknown."""
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def usable_cpus() -> int:
    """Logical CPUs this process may run on: the affinity mask, capped by a cgroup CPU quota.

    ``os.cpu_count()`` counts the host's CPUs; in a container limited with ``--cpus 2`` or a job
    pinned with ``taskset`` that overstates what the process gets, and sizing thread pools by it
    oversubscribes the CPUs.
    """
    n = None
    try:
        import psutil

        n = len(psutil.Process().cpu_affinity())
    except Exception:  # psutil has no cpu_affinity on macOS
        with contextlib.suppress(Exception):
            n = len(os.sched_getaffinity(0))
    n = n or os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.ceil(limit)))
    return max(1, n)


def physical_cores() -> int:
    """Physical CPU cores (psutil) this process can use, falling back to the logical count.

    Capped by ``usable_cpus()`` so that a container or an affinity mask narrower than the host
    does not get more compute threads than it has CPUs.
    """
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:
        n = None
    n = n or os.cpu_count() or 1
    return max(1, min(n, usable_cpus()))


# --------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------


def _omp_num_threads() -> int | None:
    """The user's ``OMP_NUM_THREADS`` as an int (first level if nested, ``"4,2"`` → 4), else None."""
    raw = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not raw:
        return None
    first = raw.split(",")[0].strip()
    if first.isdigit() and int(first) > 0:
        return int(first)
    log.warning("ignoring OMP_NUM_THREADS=%r: not a positive integer", raw)
    return None


def resolve_threads(threads: int | None = None) -> tuple[int, str]:
    """The intra-op thread count wwts uses and where it comes from, without setting anything.

    Order: ``threads`` (``--threads``) if given, else ``OMP_NUM_THREADS`` if the user exported
    it, else the physical core count (hyper-threads share a core's vector units, so they add
    little to matmul throughput).

    Returns:
        ``(n, source)`` with ``source`` one of ``"--threads"``, ``"OMP_NUM_THREADS"``,
        ``"physical cores"``.
    """
    if threads is not None:
        return int(threads), "--threads"
    env = _omp_num_threads()
    if env is not None:
        return env, "OMP_NUM_THREADS"
    return physical_cores(), "physical cores"


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads and return the number used.

    Order: ``threads`` if given, else ``OMP_NUM_THREADS`` if the user exported it, else the
    physical core count (see ``resolve_threads``). Inter-op threads are set to 1: wwts runs one
    forward pass at a time, so torch's inter-op pool would only add idle threads; it can be set
    once per process only, so a later call leaves it as it is. Environment variables are read,
    never written.
    """
    n, _ = resolve_threads(threads)
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # only settable before any inter-op work starts
        torch.set_num_interop_threads(1)
    return n


#: Cap of the decode pool on CPU runs: with draft decoding (5-15 ms an image) four threads feed
#: ~300 images/s, far above any CPU forward pass (DESIGN.md: 5-26 images/s on 2 cores).
CPU_DECODE_CAP = 4
#: Cap of the decode pool when an accelerator runs the model: GPUs consume hundreds of images/s,
#: so decoding is the bottleneck and gets the CPUs that torch's mostly idle CPU threads leave.
ACCEL_DECODE_CAP = 8


def decode_workers(threads: int, requested: int | None = None, *, accelerator: bool = False) -> int:
    """Size of the image decode thread pool.

    Rule: an explicit ``requested`` (``--workers``) is used as is (on a CPU run a warning is
    logged when it plus ``threads`` exceeds the usable CPUs). Otherwise, on a CPU run the pool
    gets the usable logical CPUs that torch's ``threads`` leave free, at least 1 and at most
    ``CPU_DECODE_CAP``; with an accelerator (``accelerator=True``) torch's CPU threads are mostly
    idle, so the pool gets all usable CPUs but one (kept for the main thread), at least 1 and at
    most ``ACCEL_DECODE_CAP``. Pillow releases the GIL while decoding, so these threads run in
    parallel with the forward pass.

    Args:
        threads: torch intra-op threads of the run.
        requested: the user's explicit pool size, or ``None``.
        accelerator: True when the model runs on CUDA / MPS / XPU.

    Returns:
        Number of decode threads, >= 1.
    """
    cpus = usable_cpus()
    if requested is not None:
        if not accelerator and requested + threads > cpus:
            log.warning("%d decode workers + %d torch threads > %d usable CPUs: they will compete",
                        requested, threads, cpus)
        return max(1, int(requested))
    if accelerator:
        return max(1, min(ACCEL_DECODE_CAP, cpus - 1))
    return max(1, min(CPU_DECODE_CAP, cpus - threads))


# --------------------------------------------------------------------------------------------
# NVIDIA driver facts (no CUDA context: NVML or nvidia-smi)
# --------------------------------------------------------------------------------------------


def _norm_uuid(uuid: Any) -> str:
    text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    text = text.strip().lower()
    return text[4:] if text.startswith("gpu-") else text


def nvml_facts() -> dict | None:
    """NVIDIA GPUs as the driver sees them, through NVML (the ``pynvml`` module of nvidia-ml-py).

    NVML queries the driver without creating a CUDA context, so no GPU memory is taken. NVML
    indices follow PCI bus order and ignore ``CUDA_VISIBLE_DEVICES``; match GPUs to torch's by
    ``uuid``.

    Returns:
        ``None`` when pynvml is not installed or NVML cannot start (no driver); else
        ``{"driver_version": str, "cuda_driver_version": "12.4" | None, "gpus": [{"index",
        "name", "uuid", "memory_total", "memory_free" (bytes), "capability": "8.6" | None}]}``.
    """
    try:
        import pynvml
    except Exception:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        log.debug("NVML did not start: %s", exc)
        return None
    try:
        def text(value: Any) -> str:
            return value.decode() if isinstance(value, bytes) else str(value)

        facts: dict = {"driver_version": None, "cuda_driver_version": None, "gpus": []}
        with contextlib.suppress(Exception):
            facts["driver_version"] = text(pynvml.nvmlSystemGetDriverVersion())
        with contextlib.suppress(Exception):
            v = int(pynvml.nvmlSystemGetCudaDriverVersion())
            facts["cuda_driver_version"] = f"{v // 1000}.{(v % 1000) // 10}"
        for i in range(int(pynvml.nvmlDeviceGetCount())):
            gpu: dict = {"index": i, "name": None, "uuid": None, "memory_total": None,
                         "memory_free": None, "capability": None}
            try:
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                gpu["name"] = text(pynvml.nvmlDeviceGetName(h))
                with contextlib.suppress(Exception):
                    gpu["uuid"] = _norm_uuid(pynvml.nvmlDeviceGetUUID(h))
                with contextlib.suppress(Exception):
                    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                    gpu["memory_total"], gpu["memory_free"] = int(mem.total), int(mem.free)
                with contextlib.suppress(Exception):
                    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
                    gpu["capability"] = f"{major}.{minor}"
            except Exception as exc:
                gpu["error"] = describe(exc)
            facts["gpus"].append(gpu)
        return facts
    except Exception as exc:
        log.debug("NVML query failed: %s", exc)
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def nvidia_smi_facts(timeout: float = 3.0) -> dict | None:
    """NVIDIA GPUs from ``nvidia-smi --query-gpu`` (used when pynvml is not installed).

    Returns:
        ``None`` when nvidia-smi is absent, fails or takes longer than ``timeout`` seconds; else
        the same shape as ``nvml_facts`` (``capability`` and ``cuda_driver_version`` ``None``).
    """
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        proc = subprocess.run(
            [exe, "--query-gpu=index,name,uuid,memory.total,memory.free,driver_version",
             "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("nvidia-smi failed: %s", exc)
        return None
    if proc.returncode != 0:
        return None
    facts: dict = {"driver_version": None, "cuda_driver_version": None, "gpus": []}
    for line in proc.stdout.splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 6:
            continue

        def mib(value: str) -> int | None:
            return int(float(value)) * 1024 * 1024 if value.replace(".", "", 1).isdigit() else None

        facts["driver_version"] = cols[5]
        facts["gpus"].append({"index": int(cols[0]) if cols[0].isdigit() else len(facts["gpus"]),
                              "name": cols[1], "uuid": _norm_uuid(cols[2]),
                              "memory_total": mib(cols[3]), "memory_free": mib(cols[4]),
                              "capability": None})
    return facts


def nvidia_driver_facts() -> dict:
    """NVIDIA GPUs the driver sees, whatever torch build is installed.

    Tries NVML first, then ``nvidia-smi``, then the names under /proc/driver/nvidia/gpus (Linux).

    Returns:
        ``{"source": "nvml" | "nvidia-smi" | "procfs" | None, "driver_version",
        "cuda_driver_version", "gpus": [...]}`` (``gpus`` empty and ``source`` None when no
        NVIDIA GPU is seen).
    """
    for source, fn in (("nvml", nvml_facts), ("nvidia-smi", nvidia_smi_facts)):
        facts = fn()
        if facts is not None and facts["gpus"]:
            return {"source": source, **facts}
    gpus = []
    root = Path("/proc/driver/nvidia/gpus")
    with contextlib.suppress(OSError):
        for i, entry in enumerate(sorted(root.iterdir())):
            name = None
            with contextlib.suppress(OSError):
                for line in (entry / "information").read_text().splitlines():
                    if line.lower().startswith("model:"):
                        name = line.split(":", 1)[1].strip()
            gpus.append({"index": i, "name": name, "uuid": None, "memory_total": None,
                         "memory_free": None, "capability": None})
    if gpus:
        return {"source": "procfs", "driver_version": None, "cuda_driver_version": None, "gpus": gpus}
    return {"source": None, "driver_version": None, "cuda_driver_version": None, "gpus": []}


# --------------------------------------------------------------------------------------------
# Accelerators as torch sees them
# --------------------------------------------------------------------------------------------


def torch_build() -> str:
    """``"CUDA 12.4"``, ``"ROCm 6.2"`` or ``"CPU-only"``: what this torch wheel was built for."""
    hip = getattr(torch.version, "hip", None)
    if hip:
        return f"ROCm {hip}"
    if torch.version.cuda:
        return f"CUDA {torch.version.cuda}"
    return "CPU-only"


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


def cuda_free_memory() -> dict[int, int]:
    """Free memory in bytes per torch CUDA index.

    Asks NVML (no CUDA context is created) and matches GPUs by UUID, so ``CUDA_VISIBLE_DEVICES``
    and ``CUDA_DEVICE_ORDER`` are honoured; where NVML is missing or a GPU cannot be matched,
    ``torch.cuda.mem_get_info`` is used, which creates a CUDA context on that GPU. An index whose
    query fails is left out.
    """
    count = torch.cuda.device_count()
    out: dict[int, int] = {}
    nvml = nvml_facts()
    by_uuid = {g["uuid"]: g["memory_free"] for g in (nvml or {}).get("gpus", [])
               if g.get("uuid") and g.get("memory_free") is not None}
    for i in range(count):
        if by_uuid:
            with contextlib.suppress(Exception):
                uuid = _norm_uuid(torch.cuda.get_device_properties(i).uuid)
                if uuid in by_uuid:
                    out[i] = by_uuid[uuid]
                    continue
        with contextlib.suppress(Exception):
            out[i] = int(torch.cuda.mem_get_info(i)[0])
    return out


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
        free = cuda_free_memory()
    except Exception as exc:
        log.debug("cannot read free GPU memory: %s", exc)
        free = {}
    order = sorted(range(count), key=lambda i: (-free.get(i, 0), i))  # ties keep index order
    return [torch.device("cuda", i) for i in order]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    try:
        return bool(mps is not None and mps.is_available())
    except Exception:
        return False


def _xpu_available() -> bool:
    xpu = getattr(torch, "xpu", None)
    try:
        return bool(xpu is not None and xpu.is_available())
    except Exception:
        return False


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
        reason: why this device, in words (``"the CUDA GPU with the most free memory (2 GPUs)"``).
    """

    device: torch.device
    auto: bool
    tried: list[tuple[str, str]] = field(default_factory=list)
    reason: str = ""


def _cuda_fix_hint() -> str:
    if torch_build() == "CPU-only":
        gpus = nvidia_driver_facts()["gpus"]
        seen = f"an NVIDIA GPU is present ({gpus[0]['name']}) but " if gpus else ""
        return (f"{seen}this torch is a CPU-only build: install a CUDA build of torch "
                f"({TORCH_INSTALL_URL}) or use --device auto")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU: unset it or use --device auto"
    return "torch sees no CUDA GPU: check the driver with nvidia-smi, or use --device auto"


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
        tried: list[tuple[str, str]] = []
        candidates = _cuda_candidates(tried)
        n_cuda = len(candidates)
        if _mps_available():
            candidates.append(torch.device("mps"))
        if _xpu_available():
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

    try:
        dev = torch.device(requested)
    except (RuntimeError, ValueError):
        raise DeviceError(f"--device {requested}: unknown device; valid: auto, cpu, cuda, cuda:N, mps, xpu. "
                          f"Available here: {available_summary()}") from None
    if dev.type == "cpu":
        return DeviceChoice(torch.device("cpu"), False, [], "--device cpu")
    if dev.type == "cuda":
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
        dev = torch.device("cuda", index)
    elif dev.type == "mps":
        if not _mps_available():
            mps = getattr(torch.backends, "mps", None)
            built = bool(mps is not None and mps.is_built())
            why = ("this torch has MPS but macOS does not offer it (needs macOS 12.3+ on Apple silicon)"
                   if built else "Apple MPS needs an Apple-silicon Mac with macOS 12.3+ and an arm64 build of torch")
            raise DeviceError(f"--device {requested} is not usable: {why}; use --device auto or --device cpu. "
                              f"Available: {available_summary()}")
    elif dev.type == "xpu":
        if not _xpu_available():
            raise DeviceError(f"--device {requested} is not usable: torch sees no Intel XPU (needs an XPU build of "
                              f"torch and Intel GPU drivers, {TORCH_INSTALL_URL}). Available: {available_summary()}")
    else:
        raise DeviceError(f"--device {requested}: unsupported device type {dev.type!r}; valid: auto, cpu, cuda, "
                          f"cuda:N, mps, xpu. Available: {available_summary()}")
    reason = probe(dev)
    if reason is not None:
        raise DeviceError(f"--device {requested} failed a test operation ({reason}). "
                          f"Available: {available_summary()}; try --device auto or --device cpu")
    return DeviceChoice(dev, False, [], f"--device {requested}")


# --------------------------------------------------------------------------------------------
# dtype
# --------------------------------------------------------------------------------------------

DTYPE_NAMES = ("float32", "float16", "bfloat16")


def cuda_capability(index: int = 0) -> tuple[int, int]:
    """Compute capability ``(major, minor)`` of CUDA device ``index`` (no CUDA context needed)."""
    props = torch.cuda.get_device_properties(index)
    return int(props.major), int(props.minor)


def _cuda_native_bf16(index: int) -> tuple[bool, str]:
    """Whether CUDA device ``index`` computes bf16 natively, and a few words why."""
    if getattr(torch.version, "hip", None):
        try:
            ok = bool(torch.cuda.is_bf16_supported())
        except Exception:
            ok = False
        return ok, "ROCm reports bf16 support" if ok else "ROCm reports no bf16 support"
    try:
        major, minor = cuda_capability(index)
    except Exception as exc:
        return False, f"compute capability unknown ({describe(exc)})"
    ok = major >= 8  # bf16 tensor cores arrived with Ampere (sm_80)
    return ok, f"compute capability {major}.{minor}"


def _autocast_ok(device_type: str) -> bool:
    try:
        return bool(torch.amp.is_autocast_available(device_type))
    except Exception:
        return device_type in ("cpu", "cuda")


def _auto_dtype(device: torch.device, batch_size: int = 8) -> tuple[torch.dtype, str]:
    if device.type == "cuda":
        ok, why = _cuda_native_bf16(device.index or 0)
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
    if device.type == "cpu" and cpu_has_native_bf16() and _autocast_ok("cpu"):
        names = " and ".join(n for n in ("AMX-BF16", "AVX512-BF16", "Arm BF16") if cpu_features().get(n)) or "bf16"
        entry = cpu_bf16_calibration(batch_size)
        if entry is None:
            return torch.float32, f"CPU reports {names} but its bf16 speed could not be measured: float32"
        speedup, day = entry["speedup"], str(entry.get("measured", ""))[:10]
        if speedup >= BF16_MIN_SPEEDUP:
            return torch.bfloat16, (f"CPU has native bf16 via {names}; a ViT block measured bf16 at "
                                    f"{speedup:.2f}x float32 here ({day})")
        return torch.float32, (f"CPU reports {names} but a ViT block measured bf16 at only {speedup:.2f}x "
                               f"float32 here ({day}; needs {BF16_MIN_SPEEDUP}x): float32")
    return torch.float32, "CPU without native bf16 (AVX512-BF16 / AMX): bf16 would be slower than float32"


#: bf16 must beat float32 by this factor on the calibration block to be chosen automatically:
#: below it the gain is within the noise of a busy machine and float32 keeps full precision.
#: (Measured on a KVM guest with AVX512-BF16 but no AMX: block 0.7x, whole ViT-B/16 tower 0.65x;
#: on a Zen 4 guest: 1.6x, whole classify run 1.55x.)
BF16_MIN_SPEEDUP = 1.2


def cpu_bf16_calibration(batch_size: int = 8, *, refresh: bool = False) -> dict | None:
    """The measured speed of bf16 over float32 on this CPU for the model's kind of work.

    Times one ViT-B/16 encoder block at ``batch_size`` (capped at 8) in both dtypes, at the
    current torch thread count, the first time a machine and setting are seen (about 1 s), and
    caches the result (``core.calibration``) under a key made of the CPU's model name, a digest
    of its flags, the torch version, the thread count and the batch size.

    Args:
        batch_size: the run's mini-batch size.
        refresh: measure again even when a cached value exists (``wwts doctor --recalibrate``).

    Returns:
        ``{"speedup": float32_s / bfloat16_s, "measured": ISO 8601 UTC time, "float32_s",
        "bfloat16_s", "workload", "key"}``, or ``None`` when it could not be measured.
    """
    from . import calibration

    key = calibration.calibration_key(cpu_model_name(), cpu_flags(), torch.get_num_threads(), batch_size)
    entry = None if refresh else calibration.cached_entry(key)
    if entry is None:
        entry = calibration.measure(key, batch_size)
    return None if entry is None else {**entry, "key": key}


def cpu_bf16_speedup(batch_size: int = 8, *, refresh: bool = False) -> float | None:
    """``cpu_bf16_calibration(batch_size)["speedup"]`` (ratio; > 1: bf16 faster), or ``None``."""
    entry = cpu_bf16_calibration(batch_size, refresh=refresh)
    return None if entry is None else float(entry["speedup"])


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
        requested: ``auto``, ``float32``, ``float16`` or ``bfloat16`` (a ``torch.dtype`` is accepted).
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
    if not _autocast_ok(device.type):
        raise DeviceError(f"--dtype {requested} is not usable on {device}: this torch has no autocast for "
                          f"{device.type}; use --dtype float32 or auto")
    if device.type == "cuda" and dtype == torch.bfloat16:
        ok, why = _cuda_native_bf16(device.index or 0)
        if not ok:
            name = ""
            with contextlib.suppress(Exception):
                name = f" ({torch.cuda.get_device_name(device.index or 0)})"
            raise DeviceError(f"--dtype bfloat16 is not usable on {device}{name}: needs an Ampere or newer GPU "
                              f"(compute capability 8.0+), this one has {why.removeprefix('compute capability ')}; "
                              f"use --dtype float16 or auto")
    if device.type == "cpu" and dtype == torch.float16 and not cpu_has_native_fp16():
        hint = "bfloat16 (native on this CPU) or float32" if cpu_has_native_bf16() else "float32 or auto"
        raise DeviceError("--dtype float16 is not usable on cpu: this CPU has no native float16 arithmetic "
                          f"(AVX512-FP16 / AMX-FP16), so CPU autocast would emulate it slowly; use --dtype {hint}")
    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_native_bf16():
        log.warning("--dtype bfloat16 on a CPU without native bf16 (AVX512-BF16 / AMX): expect it to be "
                    "slower than float32")
    return dtype


def dtype_reason(device: torch.device, dtype: torch.dtype, batch_size: int = 8) -> str:
    """Why ``dtype`` on ``device``: the ``auto`` rule's reason when it matches, else "as requested"."""
    auto, why = _auto_dtype(device, batch_size)
    if dtype == auto:
        return why
    return "as requested (--dtype)"


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


# --------------------------------------------------------------------------------------------
# The plan in words
# --------------------------------------------------------------------------------------------

def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            return f"{device} ({torch.cuda.get_device_name(device.index or 0)})"
    return str(device)


def describe_plan(task: str, device_choice: DeviceChoice, dtype: torch.dtype, threads: int,
                  batch_size: int) -> str:
    """What wwts will do for ``task`` and why, in one line.

    Example: ``"classify on cpu (auto: no usable CUDA, MPS or XPU device), bfloat16 (CPU has
    native bf16 via AVX512-BF16; a ViT block measured bf16 at 1.60x float32 here (2026-11-27)),
    2 threads (physical cores), batch 8 (default for cpu)"``. No speed is promised: the images/s
    a run reaches is measured by the run itself.
    """
    dev = device_choice.device
    how = "auto" if device_choice.auto else "requested"
    dev_why = f"{how}: {device_choice.reason}" if device_choice.reason else how
    if device_choice.tried:
        dev_why += "; failed: " + "; ".join(f"{d} ({r})" for d, r in device_choice.tried)
    dtype_name = str(dtype).removeprefix("torch.")
    default_threads, source = resolve_threads()
    thread_why = source if threads == default_threads else "--threads"
    batch_why = (f"default for {dev.type}" if batch_size == default_batch_size(dev, task) else "--batch-size")
    if dev.type != "cpu":
        batch_why += "; halved on out-of-memory"
    text = (f"{task} on {_device_label(dev)} ({dev_why}), {dtype_name} ({dtype_reason(dev, dtype, batch_size)}), "
            f"{threads} threads ({thread_why}), batch {batch_size} ({batch_why})")
    return text
