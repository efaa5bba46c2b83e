"""Facts for ``wwts doctor``: system, CPU, accelerators, optional runtimes, the plan wwts would
follow here, the model cache, and warnings that say what to fix.

``collect()`` returns one JSON-serialisable dict and never raises: a section that fails carries
an ``"error"`` line instead of its facts, so ``wwts doctor`` exits 0 on any machine, including
one where torch cannot be imported or CUDA is broken. Nothing here prints (``cli.doctor``
renders), and torch is imported only inside the sections that need it.

Every hardware fact is asked of ``hardware``'s public functions (GPU facts from NVML through
nvidia-ml-py where it is installed, which creates no CUDA context); model facts of ``models``'.
Only the device that ``--device auto`` would pick is touched by its test operation.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from typing import Any, Callable

from .errors import describe
from .models import HUB_TIMEOUT_S, cache_facts, modelscope_status

#: Bumped when keys of ``collect()``'s result are renamed or removed.
SCHEMA_VERSION = 1
#: Below this much available RAM, loading a default model (0.6-1 GB of float32 weights, more
#: while loading) is likely to swap.
LOW_RAM_BYTES = 2 * 1024**3


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _section(fn: Callable[[], dict]) -> dict:
    try:
        return fn()
    except Exception as exc:  # a failing section must not stop the others
        return {"error": describe(exc)}


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def system_facts() -> dict:
    """OS, Python, and versions of wwts, torch (with its build), transformers, Pillow, pillow-heif.

    Returns:
        ``{"os", "machine", "python", "executable", "wwts", "torch": {...}, "transformers",
        "huggingface_hub", "pillow", "pillow_heif"}``; versions are ``None`` when not installed;
        ``torch["error"]`` says why torch cannot be imported.
    """
    facts: dict[str, Any] = {
        "os": platform.platform(),
        "system": platform.system(),
        "machine": platform.machine(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "executable": sys.executable,
        "wwts": _version("wwts"),
        "transformers": _version("transformers"),
        "huggingface_hub": _version("huggingface_hub"),
        "pillow": _version("pillow"),
        "pillow_heif": _version("pillow-heif"),
    }
    try:
        from . import hardware  # imports torch

        t = hardware.torch_facts()
    except Exception as exc:
        t = {"version": _version("torch"), "build": None, "cuda_runtime": None, "hip_runtime": None,
             "cudnn": None, "cpu_capability": None, "error": describe(exc)}
    facts["torch"] = t
    return facts


def cpu_facts() -> dict:
    """CPU model, cores, instruction sets that matter for inference, RAM.

    Returns:
        ``{"model", "arch", "physical_cores", "logical_cores", "usable_cpus", "features":
        {"AVX2": bool, ...}, "native_bf16", "native_fp16", "ram_total", "ram_available"}``
        (RAM in bytes).
    """
    import psutil

    from . import hardware as hw

    vm = psutil.virtual_memory()
    return {
        "model": hw.cpu_model_name(),
        "arch": platform.machine(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "usable_cpus": hw.usable_cpus(),
        "features": hw.cpu_features(),
        "native_bf16": hw.cpu_has_native_bf16(),
        "native_fp16": hw.cpu_has_native_fp16(),
        "ram_total": int(vm.total),
        "ram_available": int(vm.available),
    }


def accelerator_facts() -> dict:
    """NVIDIA GPUs (driver and torch views), Apple MPS, Intel XPU.

    Returns:
        ``{"nvidia_driver": device.nvidia_driver_facts(), "cuda": {"available", "build",
        "device_count", "error"}, "gpus": [row per GPU], "mps": {"built", "available",
        "fallback_env"}, "xpu": {"available", "devices"}}``. GPU rows come from torch when it
        sees CUDA devices, else from the driver with ``torch_visible`` False.
    """
    from . import hardware as hw  # imports torch

    driver = _section(hw.nvidia_driver_facts)
    rows, error = hw.cuda_device_rows(driver)
    return {"nvidia_driver": driver,
            "cuda": {"available": bool(rows), "build": hw.torch_build(), "device_count": len(rows), "error": error},
            "gpus": rows or hw.driver_gpu_rows(driver),
            "mps": {"built": hw.mps_built(), "available": hw.mps_available(),
                    "fallback_env": os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK")},
            "xpu": {"available": hw.xpu_available(), "devices": hw.xpu_devices()}}


def runtime_facts() -> dict:
    """Optional inference runtimes, in short (``backends`` has the full facts: devices, providers,
    saved conversions, what ``--backend auto`` picks).

    Returns:
        ``{"onnxruntime": {"version", "providers"} | None, "openvino": {"version", "devices"} | None}``.
    """
    out: dict[str, Any] = {"onnxruntime": None, "openvino": None}
    if importlib.util.find_spec("onnxruntime") is not None:
        try:
            import onnxruntime

            out["onnxruntime"] = {"version": onnxruntime.__version__,
                                  "providers": list(onnxruntime.get_available_providers())}
        except Exception as exc:
            out["onnxruntime"] = {"version": _version("onnxruntime"), "error": describe(exc)}
    if importlib.util.find_spec("openvino") is not None:
        try:
            import openvino

            out["openvino"] = {"version": openvino.__version__,
                               "devices": list(openvino.Core().available_devices)}
        except Exception as exc:
            out["openvino"] = {"version": _version("openvino"), "error": describe(exc)}
    return out


def plan_facts(*, recalibrate: bool = False) -> dict:
    """What ``wwts classify`` / ``wwts caption`` would use here with default options.

    Runs ``select_device("auto")`` (one tiny test op on the chosen accelerator) and the dtype,
    thread and batch rules of ``hardware``; leaves torch's thread count as it found it.
    On a CPU with native bf16 the dtype rests on a measured calibration (``cpu_bf16_calibration``),
    which is measured here if it was never measured, or again with ``recalibrate``.

    Args:
        recalibrate: measure the CPU's bf16 speed again instead of using the cached value.

    Returns:
        ``{"device", "device_reason", "tried": [[device, reason]], "dtype", "dtype_reason",
        "calibration", "threads", "threads_source", "classify": {...}, "caption": {...}}`` where
        ``calibration`` is ``None`` or ``{"speedup", "measured", "float32_s", "bfloat16_s",
        "workload", "key"}`` and each task has ``batch_size``, ``decode_workers`` and ``summary``
        (one line).
    """
    from . import hardware as hw

    choice = hw.select_device("auto")
    threads, source = hw.resolve_threads(None)
    batch = hw.default_batch_size(choice.device, "classify")
    with hw.torch_threads(threads):  # the calibration measures at the run's thread count
        calibration = None
        if choice.device.type == "cpu" and hw.cpu_has_native_bf16():
            calibration = hw.cpu_bf16_calibration(batch, refresh=recalibrate)
        dtype = hw.select_dtype(choice.device, "auto", batch)
        reason = hw.dtype_reason(choice.device, dtype, batch)
        summaries = {t: hw.describe_plan(t, choice, dtype, threads, hw.default_batch_size(choice.device, t))
                     for t in ("classify", "caption")}
    accel = choice.device.type != "cpu"
    facts: dict[str, Any] = {
        "device": str(choice.device), "device_reason": choice.reason,
        "tried": [list(t) for t in choice.tried],
        "dtype": str(dtype).removeprefix("torch."), "dtype_reason": reason, "calibration": calibration,
        "threads": threads, "threads_source": source,
    }
    for task in ("classify", "caption"):
        facts[task] = {"batch_size": hw.default_batch_size(choice.device, task),
                       "decode_workers": hw.decode_workers(threads, None, accelerator=accel),
                       "summary": summaries[task]}
    return facts


def backend_section(plan: dict) -> dict:
    """``core.backends.backend_facts`` for the device the plan section proved (torch imported here)."""
    from pathlib import Path

    from . import backends, models
    from .config import RunConfig

    name = models.model_for("classify", RunConfig(task="classify", inputs=(Path("."),), labels=("-",)).lang, None)
    try:
        key = str(models.resolve(name))  # its folder when on disk: the key of the engine's run records
    except Exception:  # not cached: the hub id (no records, no saved conversion)
        key = name
    return backends.backend_facts(plan.get("device"), key, int(plan.get("threads") or 1))


def model_facts(cache_dir: str | None = None, *, check_hub: bool = True, hub_timeout: float = HUB_TIMEOUT_S) -> dict:
    """Model cache location, which default models are cached, and the hub's reachability.

    Gathered by ``models.cache_facts`` (``huggingface_hub.scan_cache_dir`` for the cache); see
    there for the arguments and the keys of the result; ``modelscope`` adds whether ModelScope
    answers and where its cache is (``models.modelscope_status``).
    """
    facts = cache_facts(cache_dir, check_hub=check_hub, hub_timeout=hub_timeout)
    facts["modelscope"] = modelscope_status(hub_timeout, check=check_hub)
    return facts


# --------------------------------------------------------------------------------------------
# Warnings
# --------------------------------------------------------------------------------------------


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 1024**3:.1f} GiB"


def _ver_tuple(text: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(text).split(".")[:2])
    except (TypeError, ValueError):
        return ()


def _gpu_warnings(torch_facts: dict, acc: dict) -> list[str]:
    """Warnings about NVIDIA GPUs: a torch build that cannot use them, a driver too old for it,
    a GPU architecture the build lacks."""
    out: list[str] = []
    driver = acc.get("nvidia_driver", {}) or {}
    driver_gpus = driver.get("gpus") or []
    build = torch_facts.get("build")
    cuda = acc.get("cuda", {}) or {}
    if driver_gpus and build == "CPU-only":
        names = ", ".join(sorted({str(g.get("name")) for g in driver_gpus}))
        cuda_max = driver.get("cuda_driver_version")
        limit = f" (the driver supports CUDA up to {cuda_max})" if cuda_max else ""
        out.append(f"an NVIDIA GPU is present ({names}) but this torch is a CPU-only build: install a CUDA "
                   f"build of torch{limit}, e.g. pip install --force-reinstall torch --index-url "
                   "https://download.pytorch.org/whl/cuXYZ with cuXYZ from https://pytorch.org/get-started/locally/")
    elif driver_gpus and build and build.startswith("CUDA") and not cuda.get("available"):
        out.append(f"the driver lists {len(driver_gpus)} NVIDIA GPU(s) but torch ({build}) sees none: check "
                   "CUDA_VISIBLE_DEVICES and that the driver is new enough for this torch")
    if cuda.get("error"):
        out.append(f"CUDA fails here ({cuda['error']}): wwts will run on the CPU; check the driver with nvidia-smi")
    runtime, driver_cuda = _ver_tuple(torch_facts.get("cuda_runtime")), _ver_tuple(driver.get("cuda_driver_version"))
    if runtime and driver_cuda and runtime[0] > driver_cuda[0]:
        out.append(f"this torch needs CUDA {torch_facts['cuda_runtime']} but the driver supports up to "
                   f"{driver.get('cuda_driver_version')}: update the NVIDIA driver or install a torch for an older CUDA")
    for g in acc.get("gpus", []) or []:
        if g.get("arch_supported") is False:
            out.append(f"{g.get('device')} ({g.get('name')}, compute capability {g.get('capability')}) is not supported "
                       f"by this torch build (built for {' '.join(g.get('arch_list', []))}): install a newer torch")
    return out


def _machine_warnings(system: dict, cpu: dict, acc: dict, plan: dict) -> list[str]:
    """Warnings about the rest of the machine: failed device probes, macOS without MPS, the CPU,
    threads, RAM and Pillow's HEIF plug-in."""
    out: list[str] = []
    for dev, reason in plan.get("tried", []) or []:
        out.append(f"{dev} failed its test operation ({reason}); --device auto passes it over")
    if platform.system() == "Darwin" and platform.machine() == "arm64" and not (acc.get("mps") or {}).get("built"):
        out.append("this torch has no MPS support: install the standard macOS arm64 torch wheel (pip install torch)")
    if platform.system() == "Darwin" and platform.machine() == "x86_64" and _rosetta():
        out.append("this Python runs under Rosetta (x86_64) on Apple silicon, so MPS is unavailable: "
                   "install an arm64 Python and torch")
    if plan.get("device") == "cpu":
        if cpu.get("features") and not cpu.get("native_bf16"):
            out.append("this CPU has no native bf16 (AVX512-BF16 / AMX), so wwts computes in float32; "
                       "--quantize int8 (dynamic int8 Linear layers) may help classify (4x float32 on an AVX512-VNNI CPU)")
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    usable = cpu.get("usable_cpus")
    if omp.isdigit() and usable and int(omp) > usable:
        out.append(f"OMP_NUM_THREADS={omp} exceeds the {usable} CPUs this process may use: threads will "
                   "compete; unset it or lower it")
    avail = cpu.get("ram_available")
    if isinstance(avail, int) and avail < LOW_RAM_BYTES:
        out.append(f"only {_gib(avail)} of RAM is available: loading a model may swap; close other programs")
    if system.get("pillow") and not system.get("pillow_heif"):
        out.append("pillow-heif is not installed: HEIC/HEIF photos (iPhone) cannot be read; pip install pillow-heif")
    return out


def _model_warnings(models: dict) -> list[str]:
    """Warnings about default models that are not cached and cannot be downloaded."""
    out: list[str] = []
    missing = [d["name"] for d in models.get("defaults", []) or [] if not d.get("cached")]
    hub = models.get("hub", {}) or {}
    if missing and (models.get("offline") or hub.get("reachable") is False):
        from .models import hub_hint

        if models.get("offline"):
            why, fix = "offline mode is on", ("unset HF_HUB_OFFLINE to let wwts download them, "
                                               "or use --model ./folder with a local copy")
        else:
            why, fix = f"the hub ({hub.get('endpoint')}) cannot be reached", hub_hint()
        out.append(f"{why} and these default models are not cached: {', '.join(missing)}; {fix}")
    return out


def warnings_for(facts: dict) -> list[str]:
    """Advice derived from ``collect()``'s facts: each item one line that says what to do."""
    out: list[str] = []
    system, cpu, acc = facts.get("system", {}), facts.get("cpu", {}), facts.get("accelerators", {})
    plan, models = facts.get("plan", {}), facts.get("models", {})
    torch_facts = system.get("torch", {}) or {}
    if torch_facts.get("error"):
        out.append(f"torch cannot be imported ({torch_facts['error']}): reinstall it, "
                   "see https://pytorch.org/get-started/locally/")
    out += _gpu_warnings(torch_facts, acc)
    out += _machine_warnings(system, cpu, acc, plan)
    out += _model_warnings(models)
    for name in ("system", "cpu", "accelerators", "runtimes", "plan", "models"):
        if isinstance(facts.get(name), dict) and facts[name].get("error") and len(facts[name]) == 1:
            out.append(f"could not collect {name} facts: {facts[name]['error']}")
    return out


def _rosetta() -> bool:
    """``hardware.running_under_rosetta()``, False when the hardware package cannot be imported."""
    try:
        from .hardware import running_under_rosetta
    except Exception:  # torch broken: the other warnings still stand
        return False
    return running_under_rosetta()


def collect(*, check_hub: bool = True, hub_timeout: float = HUB_TIMEOUT_S, cache_dir: str | None = None,
            recalibrate: bool = False) -> dict:
    """Every ``wwts doctor`` fact as one JSON-serialisable dict. Never raises.

    Args:
        check_hub: contact the hub (skipped anyway when offline mode is on).
        hub_timeout: seconds the hub check may take.
        cache_dir: hub cache to inspect (default: the one transformers uses).
        recalibrate: measure the CPU's bf16 speed again (``plan_facts``).

    Returns:
        ``{"schema", "system", "cpu", "accelerators", "runtimes", "plan", "backends", "models",
        "warnings"}`` (``backends``: ``core.backends.backend_facts``);
        a section that failed is ``{"error": "<one line>"}``. Sizes are bytes.
    """
    facts: dict[str, Any] = {"schema": SCHEMA_VERSION}
    facts["system"] = _section(system_facts)
    facts["cpu"] = _section(cpu_facts)
    facts["accelerators"] = _section(accelerator_facts)
    facts["runtimes"] = _section(runtime_facts)
    facts["plan"] = _section(lambda: plan_facts(recalibrate=recalibrate))
    facts["backends"] = _section(lambda: backend_section(facts["plan"]))
    facts["models"] = _section(lambda: model_facts(cache_dir, check_hub=check_hub, hub_timeout=hub_timeout))
    try:
        facts["warnings"] = warnings_for(facts)
    except Exception as exc:
        facts["warnings"] = [f"could not derive warnings: {describe(exc)}"]
    return facts
