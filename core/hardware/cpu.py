"""CPU facts and CPU-side sizing: model name, instruction sets, usable CPUs, threads, decode pool.

Facts are read from the OS (/proc/cpuinfo, the affinity mask, a cgroup CPU quota) and never
guessed from a table. Environment variables are read, never written (``core.env`` is the one
place that sets a default before torch is imported).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path


log = logging.getLogger(__name__)


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


def running_under_rosetta() -> bool:
    """True when this process is x86_64 code translated by Rosetta 2 on Apple silicon.

    Asks ``sysctl -n sysctl.proc_translated`` (macOS only; 2 s timeout); ``False`` elsewhere or
    when the question cannot be asked.
    """
    try:
        out = subprocess.run(["sysctl", "-n", "sysctl.proc_translated"], capture_output=True, text=True,
                             timeout=2, check=False).stdout.strip()
    except Exception:
        return False
    return out == "1"


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
    import torch  # here, not at the top: a run on OpenVINO / ONNX Runtime never loads torch

    n, _ = resolve_threads(threads)
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # only settable before any inter-op work starts
        torch.set_num_interop_threads(1)
    return n


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block, then restored (``wwts doctor``
    measures the bf16 calibration at the thread count a run would use, without keeping it)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


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
