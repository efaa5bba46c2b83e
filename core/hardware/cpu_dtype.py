"""``--dtype`` on the CPU, decided without importing torch.

The rule is ``dtype.select_dtype``'s for a CPU: ``auto`` is bfloat16 only where the CPU has native
bf16 and the cached calibration (``calibration``: a ViT-B/16 block timed in both dtypes on this
machine, thread count and batch size) measured it at least ``BF16_MIN_SPEEDUP`` times float32. It
lives here, apart from torch, so that a run served from the embedding store can know its store key
(dtype included) before deciding whether it needs the model at all (``tasks.exports``).
"""

from __future__ import annotations

import logging

from . import calibration, cpu

log = logging.getLogger(__name__)

#: bf16 must beat float32 by this factor on the calibration block to be chosen automatically:
#: below it the gain is within the noise of a busy machine and float32 keeps full precision.
#: (Measured on a KVM guest with AVX512-BF16 but no AMX: block 0.7x, whole ViT-B/16 tower 0.65x;
#: on a Zen 4 guest: 1.6x, whole classify run 1.55x.)
BF16_MIN_SPEEDUP = 1.2
NO_NATIVE_BF16 = "CPU without native bf16 (AVX512-BF16 / AMX): bf16 would be slower than float32"


def warn_emulated_bf16() -> None:
    """One warning when ``--dtype bfloat16`` runs on a CPU without native bf16 (emulated: slow)."""
    if not cpu.cpu_has_native_bf16():
        log.warning("--dtype bfloat16 on a CPU without native bf16 (AVX512-BF16 / AMX): expect it to be "
                    "slower than float32")


def bf16_entry(batch_size: int, threads: int, *, measure: bool = True, refresh: bool = False) -> dict | None:
    """The calibration entry of this CPU at ``threads`` threads and ``batch_size``
    (``calibration.cached_entry``, plus its ``key``); measured now when it is not cached and
    ``measure`` (imports torch), else ``None``."""
    key = calibration.calibration_key(cpu.cpu_model_name(), cpu.cpu_flags(), threads, batch_size)
    entry = None if refresh else calibration.cached_entry(key)
    if entry is None and measure:
        entry = calibration.measure(key, batch_size)
    return None if entry is None else {**entry, "key": key}


def auto_cpu_dtype(batch_size: int, threads: int, *, measure: bool = True,
                   autocast: bool = True) -> tuple[str, str] | None:
    """``--dtype auto`` on the CPU: ``(dtype name, reason in words)``.

    Args:
        batch_size: the run's mini-batch size (the calibration measures at it).
        threads: torch's intra-op threads for the run.
        measure: time bf16 now when this machine was never measured (imports torch); with
            ``False`` an unmeasured machine gives ``None``.
        autocast: torch has CPU autocast (``False``: float32).
    """
    if not (cpu.cpu_has_native_bf16() and autocast):
        return "float32", NO_NATIVE_BF16
    names = " and ".join(n for n in ("AMX-BF16", "AVX512-BF16", "Arm BF16") if cpu.cpu_features().get(n)) or "bf16"
    entry = bf16_entry(batch_size, threads, measure=measure)
    if entry is None:
        return None if not measure else ("float32", f"CPU reports {names} but its bf16 speed could not be "
                                                    "measured: float32")
    speedup, day = entry["speedup"], str(entry.get("measured", ""))[:10]
    if speedup >= BF16_MIN_SPEEDUP:
        return "bfloat16", (f"CPU has native bf16 via {names}; a ViT block measured bf16 at {speedup:.2f}x "
                            f"float32 here ({day})")
    return "float32", (f"CPU reports {names} but a ViT block measured bf16 at only {speedup:.2f}x float32 here "
                       f"({day}; needs {BF16_MIN_SPEEDUP}x): float32")


def cpu_dtype_without_torch(requested: str, batch_size: int, threads: int) -> str | None:
    """The dtype name ``select_dtype`` would give a run on the CPU, or ``None`` when that needs
    torch: an ``auto`` run on a CPU with native bf16 that was never calibrated, or an explicit
    dtype that ``select_dtype`` refuses here (float16 without native float16: the torch path says
    why)."""
    requested = (requested or "auto").lower()
    if requested == "auto":
        choice = auto_cpu_dtype(batch_size, threads, measure=False)
        return None if choice is None else choice[0]
    if requested == "float32":
        return requested
    if requested == "bfloat16":
        warn_emulated_bf16()
        return requested
    if requested == "float16" and cpu.cpu_has_native_fp16():
        return requested
    return None
