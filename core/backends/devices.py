"""Devices as OpenVINO and ONNX Runtime name them, and which of them a run can use.

OpenVINO: its own names (``CPU``, ``GPU``, ``GPU.1``, ``NPU``, ``AUTO``, ``HETERO:GPU,CPU``,
``MULTI:...``); a bare number means that GPU (``0`` is ``GPU.0``), ``cpu`` is ``CPU``. OpenVINO
never uses CUDA: ``cuda`` / ``mps`` are refused with the devices it has, and torch's CUDA is
never asked anything here. ONNX Runtime: execution providers, tried in the order CUDA, CoreML,
OpenVINO, CPU; each is kept only after a real inference on a tiny graph ran on it (the way
``hardware.probe`` proves a torch device), since ONNX Runtime falls back to the CPU silently.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np

from ..errors import DeviceError, describe

log = logging.getLogger(__name__)

#: ONNX Runtime providers in the order ``auto`` tries them, with the ``--device`` names that ask for them.
ORT_ORDER = (("CUDAExecutionProvider", "cuda"), ("CoreMLExecutionProvider", "coreml"),
             ("OpenVINOExecutionProvider", "openvino"), ("CPUExecutionProvider", "cpu"))
_VIRTUAL = re.compile(r"^(AUTO|MULTI|HETERO|BATCH)(?::(.+))?$")


def openvino_core() -> Any:
    """A shared ``openvino.Core`` (made once per process)."""
    global _CORE
    if _CORE is None:
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


_CORE: Any = None


def openvino_devices() -> list[dict[str, Any]]:
    """Each device OpenVINO sees: ``{"name": "CPU", "full_name": ..., "capabilities": ["FP32",
    "BF16", "INT8", ...]}`` (``OPTIMIZATION_CAPABILITIES``). Empty without OpenVINO."""
    try:
        core = openvino_core()
    except ImportError:
        return []
    out = []
    for name in core.available_devices:
        row: dict[str, Any] = {"name": name}
        for key, prop in (("full_name", "FULL_DEVICE_NAME"), ("capabilities", "OPTIMIZATION_CAPABILITIES")):
            try:
                value = core.get_property(name, prop)
                row[key] = list(value) if isinstance(value, (list, tuple)) else str(value)
            except Exception as exc:  # a plugin that cannot answer still gets its row
                row[key] = f"unknown ({describe(exc)})"
        out.append(row)
    return out


def cpu_has_amx() -> bool:
    """True when the CPU has AMX-BF16 (``hardware.cpu_features()``), where ``--backend auto``
    prefers torch's bf16 autocast and OpenVINO defaults to f32 (see ``select`` and ``openvino``)."""
    from .. import hardware

    return bool(hardware.cpu_features().get("AMX-BF16"))


#: The instructions that multiply int8 by int8 into int32 in one step (x86 VNNI and AMX, Arm's I8MM).
#: Without one, OpenVINO's int8 runs about as fast as its float: measured on a 2-core AMD EPYC VM
#: that exposes AVX2 only (2026-12-07, full-size random-weight Chinese-CLIP, whole processes): NNCF
#: int8 3.6 images/s (1,500 photos, after 264 s of conversion and calibration), OpenVINO f32 4.2,
#: torch float32 3.4, ONNX Runtime's dynamic int8 6.3 (92 photos; conversion 42 s).
INT8_DOT_FEATURES = ("AVX512-VNNI", "AVX-VNNI", "AMX-INT8", "Arm I8MM")


def cpu_has_int8_dot() -> bool:
    """True when the CPU has one of ``INT8_DOT_FEATURES`` (``hardware.cpu_features()``): where
    ``--backend auto`` weighs OpenVINO's NNCF int8; elsewhere ONNX Runtime's dynamic int8."""
    from .. import hardware

    features = hardware.cpu_features()
    return any(features.get(name) for name in INT8_DOT_FEATURES)


def openvino_device_names() -> list[str]:
    """OpenVINO's device names here (``["CPU", "GPU.0", "NPU"]``); empty without OpenVINO."""
    try:
        return list(openvino_core().available_devices)
    except ImportError:
        return []


def _has(names: list[str], device: str) -> bool:
    return device in names or any(n.split(".")[0] == device for n in names)


def resolve_openvino_device(request: str, names: list[str] | None = None) -> str:
    """The OpenVINO device string for ``--device request``.

    ``auto`` is ``CPU`` when OpenVINO has only the CPU, else ``AUTO`` (OpenVINO's automatic
    device selection); ``cpu`` is ``CPU``; ``N`` is ``GPU.N``; other names are upper-cased and
    checked against ``names`` (default: the devices OpenVINO sees), including each device listed
    in ``AUTO:``, ``MULTI:``, ``HETERO:`` and ``BATCH:``.

    Raises:
        DeviceError: a device OpenVINO does not have here (``cuda``, ``mps``, ``GPU`` on a machine
            without an Intel GPU...): one line listing the devices it has.
    """
    names = openvino_device_names() if names is None else names
    text = request.strip()
    if text.lower() == "auto":
        return "CPU" if all(n == "CPU" for n in names) else "AUTO"
    device = f"GPU.{text}" if text.isdigit() else text.upper()
    match = _VIRTUAL.match(device)
    parts = [p for p in (match.group(2) or "").split(",") if p] if match else [device]
    missing = [p for p in parts if not _has(names, p.split("(")[0])]
    if missing or (match and match.group(1) in ("HETERO", "MULTI") and not parts):
        raise DeviceError(_no_device("OpenVINO", request, missing, names))
    return device


def _no_device(backend: str, request: str, missing: list[str], names: list[str]) -> str:
    what = ", ".join(missing) if missing and missing != [request] else request
    cuda = " (OpenVINO never uses CUDA; use --backend torch for an NVIDIA GPU)" if backend == "OpenVINO" and \
        request.lower().startswith(("cuda", "mps", "xpu")) else ""
    extra = ", AUTO, HETERO:<devices>, MULTI:<devices>" if backend == "OpenVINO" else ""
    return (f"--device {request}: {backend} has no device {what}{cuda}; it has: "
            f"{', '.join(names) or 'none'}{extra}")


def onnxruntime_providers() -> list[str]:
    """The execution providers this ONNX Runtime build offers (``get_available_providers``)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def _probe_model() -> bytes:
    """A tiny ONNX graph ``y = x + 1`` over float32 ``x (1, 4)``, serialised."""
    import onnx
    from onnx import TensorProto, helper

    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def prove_provider(provider: str, options: dict | None = None) -> str | None:
    """Run the probe graph on ``provider`` alone; ``None`` when it ran there and gave ``x + 1``,
    else why not (ONNX Runtime's error, or that it fell back to another provider)."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(_probe_model(), providers=[(provider, options or {})])
        if sess.get_providers()[0] != provider:
            return f"fell back to {sess.get_providers()[0]}"
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        if not np.allclose(sess.run(None, {"x": x})[0], x + 1):
            return "gave a wrong result"
    except Exception as exc:
        return describe(exc)
    return None


def resolve_ort_providers(request: str) -> tuple[str, tuple[tuple[str, dict], ...]]:
    """``(device label, providers)`` for ``--device request`` under ONNX Runtime.

    ``auto``: every provider of ``ORT_ORDER`` this build has and ``prove_provider`` proves, in
    that order (the CPU always last). ``cpu``, ``cuda``, ``cuda:N``, ``coreml``, ``openvino``: that
    provider (proven), then the CPU for the operators it lacks.

    Raises:
        DeviceError: an unknown device, or one this ONNX Runtime does not have or cannot run: one
            line listing what it has.
    """
    available = onnxruntime_providers()
    have = [dev for prov, dev in ORT_ORDER if prov in available]
    text = request.strip().lower()
    if text == "auto":
        chosen = []
        for prov, dev in ORT_ORDER:
            if prov in available and prov != "CPUExecutionProvider":
                why = prove_provider(prov)
                if why is None:
                    chosen.append((prov, {}))
                else:
                    log.warning("ONNX Runtime's %s cannot be used: %s", prov, why)
        label = chosen[0][0].replace("ExecutionProvider", "").lower() if chosen else "cpu"
        return label, tuple(chosen) + (("CPUExecutionProvider", {}),)
    name, _, index = text.partition(":")
    prov = next((p for p, dev in ORT_ORDER if dev == name), None)
    if prov is None or prov not in available or (index and not index.isdigit()):
        raise DeviceError(_no_device("ONNX Runtime", request, [], have))
    options = {"device_id": int(index)} if index and prov == "CUDAExecutionProvider" else {}
    why = prove_provider(prov, options)
    if why is not None:
        raise DeviceError(f"--device {request}: ONNX Runtime's {prov} failed a test inference ({why}); "
                          f"it has: {', '.join(have)}")
    tail = () if prov == "CPUExecutionProvider" else (("CPUExecutionProvider", {}),)
    return text, ((prov, options),) + tail
