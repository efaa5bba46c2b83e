"""NVIDIA GPU facts: what the driver sees (NVML, ``nvidia-smi``, /proc) and what torch sees.

Driver facts come from NVML through nvidia-ml-py (module ``pynvml``), which queries the driver
without creating a CUDA context; where pynvml is missing or NVML cannot start, ``nvidia-smi`` is
asked, then the names under /proc/driver/nvidia/gpus. NVML indices follow PCI bus order and
ignore ``CUDA_VISIBLE_DEVICES``: GPUs are matched to torch's by UUID (``norm_uuid``).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

from ..errors import describe

log = logging.getLogger(__name__)


def norm_uuid(uuid: Any) -> str:
    """A GPU UUID as NVML, nvidia-smi and torch all agree on it: lower case, no ``GPU-`` prefix.

    ``b"GPU-ABCD-..."``, ``"GPU-abcd-..."`` and torch's ``props.uuid`` (a ``uuid.UUID`` or its
    string) all become ``"abcd-..."``.
    """
    text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    text = text.strip().lower()
    return text[4:] if text.startswith("gpu-") else text


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_gpu(pynvml: Any, i: int) -> dict:
    """One GPU's NVML row; a query that fails leaves its field ``None`` (or sets ``error``)."""
    gpu: dict = {"index": i, "name": None, "uuid": None, "memory_total": None,
                 "memory_free": None, "capability": None}
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        gpu["name"] = _text(pynvml.nvmlDeviceGetName(h))
        with contextlib.suppress(Exception):
            gpu["uuid"] = norm_uuid(pynvml.nvmlDeviceGetUUID(h))
        with contextlib.suppress(Exception):
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            gpu["memory_total"], gpu["memory_free"] = int(mem.total), int(mem.free)
        with contextlib.suppress(Exception):
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            gpu["capability"] = f"{major}.{minor}"
    except Exception as exc:
        gpu["error"] = describe(exc)
    return gpu


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
        facts: dict = {"driver_version": None, "cuda_driver_version": None, "gpus": []}
        with contextlib.suppress(Exception):
            facts["driver_version"] = _text(pynvml.nvmlSystemGetDriverVersion())
        with contextlib.suppress(Exception):
            v = int(pynvml.nvmlSystemGetCudaDriverVersion())
            facts["cuda_driver_version"] = f"{v // 1000}.{(v % 1000) // 10}"
        facts["gpus"] = [_nvml_gpu(pynvml, i) for i in range(int(pynvml.nvmlDeviceGetCount()))]
        return facts
    except Exception as exc:
        log.debug("NVML query failed: %s", exc)
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _mib(value: str) -> int | None:
    return int(float(value)) * 1024 * 1024 if value.replace(".", "", 1).isdigit() else None


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
        facts["driver_version"] = cols[5]
        facts["gpus"].append({"index": int(cols[0]) if cols[0].isdigit() else len(facts["gpus"]),
                              "name": cols[1], "uuid": norm_uuid(cols[2]),
                              "memory_total": _mib(cols[3]), "memory_free": _mib(cols[4]),
                              "capability": None})
    return facts


def _procfs_gpus() -> list[dict]:
    """GPU names from /proc/driver/nvidia/gpus/*/information (Linux; empty elsewhere)."""
    gpus = []
    with contextlib.suppress(OSError):
        for i, entry in enumerate(sorted(Path("/proc/driver/nvidia/gpus").iterdir())):
            name = None
            with contextlib.suppress(OSError):
                for line in (entry / "information").read_text().splitlines():
                    if line.lower().startswith("model:"):
                        name = line.split(":", 1)[1].strip()
            gpus.append({"index": i, "name": name, "uuid": None, "memory_total": None,
                         "memory_free": None, "capability": None})
    return gpus


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
    gpus = _procfs_gpus()
    if gpus:
        return {"source": "procfs", "driver_version": None, "cuda_driver_version": None, "gpus": gpus}
    return {"source": None, "driver_version": None, "cuda_driver_version": None, "gpus": []}


# --------------------------------------------------------------------------------------------
# CUDA devices as torch sees them
# --------------------------------------------------------------------------------------------


def cuda_capability(index: int = 0) -> tuple[int, int]:
    """Compute capability ``(major, minor)`` of CUDA device ``index`` (no CUDA context needed)."""
    props = torch.cuda.get_device_properties(index)
    return int(props.major), int(props.minor)


def cuda_native_bf16(index: int) -> tuple[bool, str]:
    """Whether CUDA device ``index`` computes bf16 natively, and a few words why.

    CUDA: compute capability 8.0 or newer (bf16 tensor cores arrived with Ampere, sm_80); ROCm:
    what ``torch.cuda.is_bf16_supported()`` says. Never raises.

    Returns:
        ``(native, why)``, e.g. ``(True, "compute capability 8.6")`` or
        ``(False, "compute capability unknown (RuntimeError: ...)")``.
    """
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
                uuid = norm_uuid(torch.cuda.get_device_properties(i).uuid)
                if uuid in by_uuid:
                    out[i] = by_uuid[uuid]
                    continue
        with contextlib.suppress(Exception):
            out[i] = int(torch.cuda.mem_get_info(i)[0])
    return out


def _arch_supported(major: int, minor: int, arch_list: list[str]) -> bool:
    """Whether a torch built for ``arch_list`` runs on sm_<major><minor>: a cubin for this exact
    arch, or PTX (``compute_XY``) at or below it."""
    ptx = [a for a in arch_list if a.startswith("compute_")]
    return f"sm_{major}{minor}" in arch_list or any(
        int(a.split("_")[1]) <= major * 10 + minor for a in ptx if a.split("_")[1].isdigit())


def _cuda_row(i: int, by_uuid: dict[str, dict], arch_list: list[str]) -> dict[str, Any]:
    """The row of torch CUDA device ``i`` (see ``cuda_device_rows``)."""
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
        row["bf16"] = cuda_native_bf16(i)[0]
        if arch_list and not getattr(torch.version, "hip", None):
            row["arch_supported"] = _arch_supported(props.major, props.minor, arch_list)
            row["arch_list"] = arch_list
        nv = by_uuid.get(norm_uuid(getattr(props, "uuid", "")))
        if nv is not None and nv.get("memory_free") is not None:
            row["memory_free"] = nv["memory_free"]
            row["source"] = "torch+nvml"
        else:  # creates a CUDA context on this GPU; only when NVML cannot answer
            row["memory_free"] = int(torch.cuda.mem_get_info(i)[0])
    except Exception as exc:
        row["error"] = describe(exc)
    return row


def cuda_device_rows(driver: dict) -> tuple[list[dict], str | None]:
    """One row per CUDA device torch sees, for ``wwts doctor``.

    Free memory comes from the driver facts (``nvidia_driver_facts()``, matched by UUID) when they
    have it, else from ``torch.cuda.mem_get_info`` (which creates a CUDA context on that GPU).

    Args:
        driver: ``nvidia_driver_facts()``'s result (or ``{}``).

    Returns:
        ``(rows, error)``: rows ``{"index", "device": "cuda:N", "name", "capability": "8.6",
        "memory_total", "memory_free" (bytes), "bf16", "multiprocessors", "arch_supported",
        "arch_list" (CUDA builds), "torch_visible": True, "source": "torch" | "torch+nvml"}``
        (a row whose query failed carries ``"error"``); ``error`` is the one-line reason when
        asking torch about CUDA raised, else ``None``. No rows when torch sees no CUDA device.
    """
    try:
        if not torch.cuda.is_available():
            return [], None
        count = torch.cuda.device_count()
    except Exception as exc:
        return [], describe(exc)
    by_uuid = {g.get("uuid"): g for g in driver.get("gpus", []) if g.get("uuid")}
    arch_list: list[str] = []
    with contextlib.suppress(Exception):
        arch_list = list(torch.cuda.get_arch_list())
    return [_cuda_row(i, by_uuid, arch_list) for i in range(count)], None


def driver_gpu_rows(driver: dict) -> list[dict]:
    """Rows in ``cuda_device_rows``' shape for the GPUs only the driver sees (``torch_visible``
    False, ``device`` None): shown when this torch cannot use them (a CPU-only build, hidden
    devices). ``bf16`` follows the capability NVML reports (``None`` without it)."""
    return [{"index": g["index"], "device": None, "name": g.get("name"),
             "capability": g.get("capability"), "memory_total": g.get("memory_total"),
             "memory_free": g.get("memory_free"),
             "bf16": (int(g["capability"].split(".")[0]) >= 8) if g.get("capability") else None,
             "torch_visible": False, "source": driver.get("source")}
            for g in driver.get("gpus", [])]
