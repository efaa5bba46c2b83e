"""What ``wwts doctor`` says about backends: OpenVINO's devices, ONNX Runtime's providers, the
saved conversions, and what ``--backend auto`` picks here and why."""

from __future__ import annotations

import os
from typing import Any

from ..errors import describe
from .export import cache_root, compiled_dir, exports, list_conversions, read_export
from .devices import cpu_has_amx, onnxruntime_providers, openvino_device_names, openvino_devices
from .select import INSTALL, auto_backends, installed


def backend_facts(torch_device: str | None, model: str = "", threads: int = 1) -> dict[str, Any]:
    """Facts about the backends on this machine.

    Args:
        torch_device: the device ``--device auto`` proves for torch (``"cpu"``, ``"cuda:0"``;
            from the doctor's plan section, so no device is probed twice).
        model / threads: the default classify model (its folder when on disk) and the run's
            threads: on a CPU, ``auto["sized"]`` is ``sized_picks`` for them.

    Returns:
        ``{"openvino": {"installed", "version", "devices": [{"name", "full_name",
        "capabilities"}], "install"}, "onnxruntime": {"installed", "version", "providers",
        "install"}, "conversions": {"folder", "count", "bytes", "compiled_bytes", "bundles" (exports with the
        facts a classify run starts from without torch), "items": [...]},
        "auto": {"classify": {"backend", "reason", "text_backend"}, "classify_int8": {...}, "sized": {...}}}``; a part that
        fails carries ``"error"``.
    """
    kind = (torch_device or "cpu").split(":")[0]
    out: dict[str, Any] = {"openvino": _openvino(), "onnxruntime": _onnxruntime(), "conversions": _conversions()}
    auto: dict[str, Any] = {}
    for key, int8 in (("classify", False), ("classify_int8", True)):
        try:
            name, reason, text = auto_backends("auto", "classify", int8, torch_device=lambda: kind,
                                               openvino_devices=openvino_device_names, cpu_has_amx=cpu_has_amx)
            auto[key] = {"backend": name, "reason": reason, "text_backend": text}
        except Exception as exc:  # e.g. int8 with neither runtime installed
            auto[key] = {"backend": None, "reason": describe(exc)}
    preset = os.environ.get("WWTS_BACKEND", "").strip().lower()
    if preset and preset != "auto":
        auto = {key: {"backend": preset, "reason": f"WWTS_BACKEND={preset}"} for key in auto}
    out["auto"] = auto
    if kind == "cpu" and not (preset and preset != "auto"):
        out["auto"]["sized"] = sized_picks(model, threads)
    return out


#: The folder sizes ``wwts doctor`` shows the size rule's pick for (issue 22).
DOCTOR_SIZES = (100, 10_000)


def sized_picks(model: str, threads: int, sizes: tuple[int, ...] = DOCTOR_SIZES) -> dict[str, Any]:
    """What ``--backend auto`` does for a default classify run of ``model`` (folder or hub id) on
    this CPU at each folder size: ``{"100": {"backend", "int8", "reason"}, ...}`` (``build.size_rule``
    from this machine's records; a size that fails carries ``"error"``)."""
    from pathlib import Path

    from .build import plan_backend

    out: dict[str, Any] = {}
    for n in sizes:
        try:
            c = plan_backend("auto", "auto", task="classify", threads=threads, model=model,
                             paths=[Path(f"photo-{i}.jpg") for i in range(n)])
            out[str(n)] = {"backend": c.name, "int8": c.int8, "reason": c.reason}
        except Exception as exc:
            out[str(n)] = {"error": describe(exc)}
    return out


def _openvino() -> dict[str, Any]:
    if not installed("openvino"):
        return {"installed": False, "install": INSTALL["openvino"]}
    try:
        from .openvino import version

        return {"installed": True, "version": version(), "devices": openvino_devices()}
    except Exception as exc:
        return {"installed": True, "error": describe(exc)}


def _onnxruntime() -> dict[str, Any]:
    if not installed("onnxruntime"):
        return {"installed": False, "install": INSTALL["onnxruntime"]}
    try:
        from .onnxruntime import version

        return {"installed": True, "version": version(), "providers": onnxruntime_providers()}
    except Exception as exc:
        return {"installed": True, "error": describe(exc)}


def _conversions() -> dict[str, Any]:
    items = list_conversions()
    blobs = compiled_dir()
    compiled = sum(p.stat().st_size for p in blobs.rglob("*") if p.is_file()) if blobs.is_dir() else 0
    bundles = [where for where in exports() if "facts" in read_export(where)]
    return {"folder": str(cache_root()), "count": len(items), "bytes": sum(c.size_bytes for c in items),
            "compiled_bytes": compiled, "bundles": len(bundles),
            "items": [{"backend": c.backend, "model": c.model, "tower": c.tower, "precision": c.precision,
                       "bytes": c.size_bytes, "seconds": c.seconds} for c in items]}
