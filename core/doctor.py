"""Facts for ``wwts doctor``: system, CPU, accelerators, optional runtimes, the plan wwts would
follow here, the model cache, and warnings that say what to fix.

``collect()`` returns one JSON-serialisable dict and never raises: a section that fails carries
an ``"error"`` line instead of its facts, so ``wwts doctor`` exits 0 on any machine, including
one where torch cannot be imported or CUDA is broken. Nothing here prints (``cli.doctor``
renders), and torch is imported only inside the sections that need it.

GPU facts come from NVML (nvidia-ml-py) where it is installed, which creates no CUDA context;
only the device that ``--device auto`` would pick is touched by its test operation.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from wwts.core.errors import describe

#: Bumped when keys of ``collect()``'s result are renamed or removed.
SCHEMA_VERSION = 1
#: Seconds the hub reachability check may take (it runs in a daemon thread, so a slow DNS
#: lookup cannot hold ``wwts doctor`` longer than this plus half a second).
HUB_TIMEOUT_S = 2.0
#: Below this much available RAM, loading a default model (0.6-1 GB of float32 weights, more
#: while loading) is likely to swap.
LOW_RAM_BYTES = 2 * 1024**3
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's ENV_VARS_TRUE_VALUES


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
    t: dict[str, Any] = {"version": _version("torch"), "build": None, "cuda_runtime": None,
                         "hip_runtime": None, "cudnn": None, "cpu_capability": None, "error": None}
    try:
        import torch

        from wwts.core.hardware import torch_build

        t["version"] = torch.__version__
        t["build"] = torch_build()
        t["cuda_runtime"] = torch.version.cuda
        t["hip_runtime"] = getattr(torch.version, "hip", None)
        with contextlib.suppress(Exception):
            v = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
            t["cudnn"] = f"{v // 10000}.{(v // 100) % 100}.{v % 100}" if v and v >= 10000 else (
                f"{v // 1000}.{(v // 100) % 10}.{v % 100}" if v else None)
        with contextlib.suppress(Exception):
            t["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception as exc:
        t["error"] = describe(exc)
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

    from wwts.core.hardware import device as dv

    vm = psutil.virtual_memory()
    return {
        "model": dv.cpu_model_name(),
        "arch": platform.machine(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "usable_cpus": dv.usable_cpus(),
        "features": dv.cpu_features(),
        "native_bf16": dv.cpu_has_native_bf16(),
        "native_fp16": dv.cpu_has_native_fp16(),
        "ram_total": int(vm.total),
        "ram_available": int(vm.available),
    }


def _cuda_device_rows(driver: dict) -> tuple[list[dict], str | None]:
    """Rows for the CUDA devices torch sees, free memory from NVML when it can match them."""
    import torch

    from wwts.core.hardware import device as dv

    rows: list[dict] = []
    try:
        if not torch.cuda.is_available():
            return rows, None
        count = torch.cuda.device_count()
    except Exception as exc:
        return rows, describe(exc)
    by_uuid = {g.get("uuid"): g for g in driver.get("gpus", []) if g.get("uuid")}
    arch_list: list[str] = []
    with contextlib.suppress(Exception):
        arch_list = list(torch.cuda.get_arch_list())
    for i in range(count):
        row: dict[str, Any] = {"index": i, "device": f"cuda:{i}", "name": None, "capability": None,
                               "memory_total": None, "memory_free": None, "bf16": None,
                               "multiprocessors": None, "arch_supported": None, "torch_visible": True,
                               "source": "torch"}
        try:
            props = torch.cuda.get_device_properties(i)
            row["name"] = props.name
            row["capability"] = f"{props.major}.{props.minor}"
            row["memory_total"] = int(props.total_memory)
            row["multiprocessors"] = getattr(props, "multi_processor_count", None)
            row["bf16"] = dv._cuda_native_bf16(i)[0]
            sm = f"sm_{props.major}{props.minor}"
            if arch_list and not getattr(torch.version, "hip", None):
                # Supported: a cubin for this exact arch, or PTX (compute_XY) at or below it.
                ptx = [a for a in arch_list if a.startswith("compute_")]
                row["arch_supported"] = sm in arch_list or any(
                    int(a.split("_")[1]) <= props.major * 10 + props.minor for a in ptx if a.split("_")[1].isdigit())
                row["arch_list"] = arch_list
            nv = by_uuid.get(dv._norm_uuid(getattr(props, "uuid", "")))
            if nv is not None and nv.get("memory_free") is not None:
                row["memory_free"] = nv["memory_free"]
                row["source"] = "torch+nvml"
            else:  # creates a CUDA context on this GPU; only when NVML cannot answer
                row["memory_free"] = int(torch.cuda.mem_get_info(i)[0])
        except Exception as exc:
            row["error"] = describe(exc)
        rows.append(row)
    return rows, None


def accelerator_facts() -> dict:
    """NVIDIA GPUs (driver and torch views), Apple MPS, Intel XPU.

    Returns:
        ``{"nvidia_driver": device.nvidia_driver_facts(), "cuda": {"available", "build",
        "device_count", "error"}, "gpus": [row per GPU], "mps": {"built", "available",
        "fallback_env"}, "xpu": {"available", "devices"}}``. GPU rows come from torch when it
        sees CUDA devices, else from the driver with ``torch_visible`` False.
    """
    from wwts.core.hardware import device as dv

    driver = _section(dv.nvidia_driver_facts)
    facts: dict[str, Any] = {"nvidia_driver": driver}
    try:
        import torch
    except Exception as exc:
        facts["cuda"] = {"available": False, "build": None, "device_count": 0, "error": describe(exc)}
        facts["gpus"] = []
        return facts
    rows, error = _cuda_device_rows(driver)
    facts["cuda"] = {"available": bool(rows), "build": dv.torch_build(), "device_count": len(rows),
                     "error": error}
    if not rows:
        for g in driver.get("gpus", []):
            rows.append({"index": g["index"], "device": None, "name": g.get("name"),
                         "capability": g.get("capability"), "memory_total": g.get("memory_total"),
                         "memory_free": g.get("memory_free"),
                         "bf16": (int(g["capability"].split(".")[0]) >= 8) if g.get("capability") else None,
                         "torch_visible": False, "source": driver.get("source")})
    facts["gpus"] = rows
    mps = getattr(torch.backends, "mps", None)
    facts["mps"] = {"built": bool(mps is not None and _safe_call(mps.is_built)),
                    "available": dv._mps_available(),
                    "fallback_env": os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK")}
    xpu: dict[str, Any] = {"available": dv._xpu_available(), "devices": []}
    if xpu["available"]:
        with contextlib.suppress(Exception):
            xpu["devices"] = [{"index": i, "name": torch.xpu.get_device_name(i)}
                              for i in range(torch.xpu.device_count())]
    facts["xpu"] = xpu
    return facts


def _safe_call(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:
        return None


def runtime_facts() -> dict:
    """Optional inference runtimes, reported only (wwts does not use them).

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
    thread and batch rules of ``core.device``; leaves torch's thread count as it found it.
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
    from wwts.core.hardware import device as dv

    choice = dv.select_device("auto")
    threads, source = dv.resolve_threads(None)
    batch = dv.default_batch_size(choice.device, "classify")
    with _torch_threads(threads):  # the calibration measures at the run's thread count
        calibration = None
        if choice.device.type == "cpu" and dv.cpu_has_native_bf16():
            calibration = dv.cpu_bf16_calibration(batch, refresh=recalibrate)
        dtype = dv.select_dtype(choice.device, "auto", batch)
        reason = dv.dtype_reason(choice.device, dtype, batch)
        summaries = {t: dv.describe_plan(t, choice, dtype, threads, dv.default_batch_size(choice.device, t))
                     for t in ("classify", "caption")}
    accel = choice.device.type != "cpu"
    facts: dict[str, Any] = {
        "device": str(choice.device), "device_reason": choice.reason,
        "tried": [list(t) for t in choice.tried],
        "dtype": str(dtype).removeprefix("torch."), "dtype_reason": reason, "calibration": calibration,
        "threads": threads, "threads_source": source,
    }
    for task in ("classify", "caption"):
        facts[task] = {"batch_size": dv.default_batch_size(choice.device, task),
                       "decode_workers": dv.decode_workers(threads, None, accelerator=accel),
                       "summary": summaries[task]}
    return facts


@contextlib.contextmanager
def _torch_threads(n: int):
    """torch's intra-op thread count set to ``n`` for the block, then restored."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value (1/on/yes/true)."""
    return any(os.environ.get(k, "").strip().upper() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    """The model hub in use: ``HF_ENDPOINT`` (a mirror such as https://hf-mirror.com) or huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or "https://huggingface.co"


def _head(url: str, timeout: float) -> tuple[bool, str]:
    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": f"wwts/{_version('wwts')} doctor"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # honours HTTPS_PROXY
            return True, f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:  # the server answered: reachable
        return True, f"HTTP {exc.code}"
    except Exception as exc:
        reason = getattr(exc, "reason", None)
        return False, str(reason) if reason else describe(exc)


def hub_status(timeout: float = HUB_TIMEOUT_S) -> dict:
    """Whether the model hub answers, without waiting more than ``timeout`` (+0.5) seconds.

    Skipped (instant) when offline mode is on. Otherwise one HEAD request to the endpoint runs
    in a daemon thread; DNS lookups ignore socket timeouts, so the thread is abandoned rather
    than waited for when it overruns.

    Returns:
        ``{"endpoint", "offline", "checked", "reachable": bool | None, "detail", "seconds"}``.
    """
    endpoint = hub_endpoint()
    if hub_offline():
        return {"endpoint": endpoint, "offline": True, "checked": False, "reachable": None,
                "detail": "offline mode (HF_HUB_OFFLINE): the hub is not contacted", "seconds": 0.0}
    result: dict[str, Any] = {}

    def worker() -> None:
        result["reachable"], result["detail"] = _head(endpoint, timeout)

    start = time.monotonic()
    thread = threading.Thread(target=worker, name="wwts-hub-check", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    seconds = round(time.monotonic() - start, 2)
    if "reachable" not in result:
        return {"endpoint": endpoint, "offline": False, "checked": True, "reachable": False,
                "detail": f"no answer within {timeout:g} s", "seconds": seconds}
    return {"endpoint": endpoint, "offline": False, "checked": True, "reachable": result["reachable"],
            "detail": result["detail"], "seconds": seconds}


def cached_model(repo_id: str, cache_dir: str | os.PathLike) -> dict:
    """Whether hub model ``repo_id`` is in the hub cache ``cache_dir`` (no network).

    A model counts as cached when its ``config.json`` and at least one weight file
    (``*.safetensors`` / ``*.bin``) are in the snapshot of its ``main`` ref.

    Returns:
        ``{"cached": bool, "path": snapshot folder | None, "size_bytes": int | None}``.
    """
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(cache_dir))
    if not isinstance(found, str):
        return {"cached": False, "path": None, "size_bytes": None}
    snap = Path(found).parent
    files = [p for p in snap.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin")]
    return {"cached": bool(weights), "path": str(snap),
            "size_bytes": sum(p.stat().st_size for p in files)}


def model_facts(cache_dir: str | None = None, *, check_hub: bool = True, hub_timeout: float = HUB_TIMEOUT_S) -> dict:
    """Model cache location, which default models are cached, and the hub's reachability.

    Args:
        cache_dir: hub cache to inspect (default: ``models.hub_cache_dir()``).
        check_hub: False skips the network check (``hub["checked"]`` False).
        hub_timeout: seconds for the check (see ``hub_status``).

    Returns:
        ``{"cache_dir", "hf_home", "endpoint", "offline", "hub": hub_status(), "defaults":
        [{"key", "name", "task", "lang", "cached", "path", "size_bytes"}]}``.
    """
    from wwts.core.models import DEFAULT_MODELS, hub_cache_dir

    cache_dir = cache_dir or hub_cache_dir()
    defaults = []
    for key, spec in DEFAULT_MODELS.items():
        row = {"key": key, "name": spec.name, "task": spec.task, "lang": spec.lang}
        try:
            row.update(cached_model(spec.name, cache_dir))
        except Exception as exc:
            row.update({"cached": False, "path": None, "size_bytes": None, "error": describe(exc)})
        defaults.append(row)
    if check_hub:
        hub = hub_status(hub_timeout)
    else:
        hub = {"endpoint": hub_endpoint(), "offline": hub_offline(), "checked": False, "reachable": None,
               "detail": "not checked", "seconds": 0.0}
    return {"cache_dir": str(cache_dir), "hf_home": os.environ.get("HF_HOME"), "endpoint": hub_endpoint(),
            "offline": hub_offline(), "hub": hub, "defaults": defaults}


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


def warnings_for(facts: dict) -> list[str]:
    """Advice derived from ``collect()``'s facts: each item one line that says what to do."""
    out: list[str] = []
    system, cpu, acc = facts.get("system", {}), facts.get("cpu", {}), facts.get("accelerators", {})
    plan, models = facts.get("plan", {}), facts.get("models", {})
    torch_facts = system.get("torch", {}) or {}
    if torch_facts.get("error"):
        out.append(f"torch cannot be imported ({torch_facts['error']}): reinstall it, "
                   "see https://pytorch.org/get-started/locally/")
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
    missing = [d["name"] for d in models.get("defaults", []) or [] if not d.get("cached")]
    hub = models.get("hub", {}) or {}
    if missing and (models.get("offline") or hub.get("reachable") is False):
        from wwts.core.models import hub_hint

        if models.get("offline"):
            why, fix = "offline mode is on", ("unset HF_HUB_OFFLINE to let wwts download them, "
                                               "or use --model ./folder with a local copy")
        else:
            why, fix = f"the hub ({hub.get('endpoint')}) cannot be reached", hub_hint()
        out.append(f"{why} and these default models are not cached: {', '.join(missing)}; {fix}")
    for name in ("system", "cpu", "accelerators", "runtimes", "plan", "models"):
        if isinstance(facts.get(name), dict) and facts[name].get("error") and len(facts[name]) == 1:
            out.append(f"could not collect {name} facts: {facts[name]['error']}")
    return out


def _rosetta() -> bool:
    """True when this process is x86_64 code translated by Rosetta 2 on Apple silicon."""
    import subprocess

    try:
        out = subprocess.run(["sysctl", "-n", "sysctl.proc_translated"], capture_output=True, text=True,
                             timeout=2, check=False).stdout.strip()
    except Exception:
        return False
    return out == "1"


def collect(*, check_hub: bool = True, hub_timeout: float = HUB_TIMEOUT_S, cache_dir: str | None = None,
            recalibrate: bool = False) -> dict:
    """Every ``wwts doctor`` fact as one JSON-serialisable dict. Never raises.

    Args:
        check_hub: contact the hub (skipped anyway when offline mode is on).
        hub_timeout: seconds the hub check may take.
        cache_dir: hub cache to inspect (default: the one transformers uses).
        recalibrate: measure the CPU's bf16 speed again (``plan_facts``).

    Returns:
        ``{"schema", "system", "cpu", "accelerators", "runtimes", "plan", "models", "warnings"}``;
        a section that failed is ``{"error": "<one line>"}``. Sizes are bytes.
    """
    facts: dict[str, Any] = {"schema": SCHEMA_VERSION}
    facts["system"] = _section(system_facts)
    facts["cpu"] = _section(cpu_facts)
    facts["accelerators"] = _section(accelerator_facts)
    facts["runtimes"] = _section(runtime_facts)
    facts["plan"] = _section(lambda: plan_facts(recalibrate=recalibrate))
    facts["models"] = _section(lambda: model_facts(cache_dir, check_hub=check_hub, hub_timeout=hub_timeout))
    try:
        facts["warnings"] = warnings_for(facts)
    except Exception as exc:
        facts["warnings"] = [f"could not derive warnings: {describe(exc)}"]
    return facts
