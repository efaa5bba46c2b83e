"""The device a run computes on and how it was chosen (no torch import: a run on OpenVINO or ONNX
Runtime holds one too, with the host CPU as its device)."""

from __future__ import annotations

import glob
import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DeviceChoice:
    """The chosen device and how it was chosen.

    Attributes:
        device: the proven ``torch.device`` (``HOST_CPU`` for a run that does not use torch).
        auto: True when picked by ``--device auto``.
        tried: ``(device, reason)`` for each candidate whose probe failed before this one.
        reason: why this device, in words (``"the CUDA GPU with the most free memory (2 GPUs)"``).
    """

    device: Any
    auto: bool
    tried: list[tuple[str, str]] = field(default_factory=list)
    reason: str = ""


@dataclass(frozen=True)
class HostCPU:
    """The host CPU where a torch-free run makes its inputs (what ``torch.device("cpu")`` is to a
    torch run): ``type`` is ``"cpu"``, ``str()`` is ``"cpu"``."""

    type: str = "cpu"

    def __str__(self) -> str:
        return "cpu"


#: The ``device`` of a run on OpenVINO or ONNX Runtime, as the engine sees it.
HOST_CPU = HostCPU()


#: Mini-batch size by ``(device type, task)`` when the user gave none.
DEFAULT_BATCH_SIZES = {
    ("cpu", "classify"): 8, ("cpu", "caption"): 8,
    ("cuda", "classify"): 64, ("cuda", "caption"): 32,
    ("mps", "classify"): 32, ("mps", "caption"): 8,
    ("xpu", "classify"): 32, ("xpu", "caption"): 16,
}


def default_batch_size(device: Any, task: str) -> int:
    """Mini-batch size for ``task`` on ``device`` (a ``torch.device`` or ``HOST_CPU``) when the
    user gave none."""
    return DEFAULT_BATCH_SIZES.get((device.type, task), 8)


def accelerator_present() -> bool:
    """Whether this machine may have a device torch would pick over the CPU, judged without torch:
    an NVIDIA driver (``/proc/driver/nvidia/version``, ``/dev/nvidia0``...), ROCm (``/dev/kfd``), a
    GPU render node (Intel XPU), Apple silicon (MPS), or ``CUDA_VISIBLE_DEVICES`` naming a device.
    False means ``--device auto`` is the CPU and torch need not be imported to prove it."""
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return True
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        nvidia = False  # CUDA hidden on purpose
    else:
        nvidia = os.path.exists("/proc/driver/nvidia/version") or bool(glob.glob("/dev/nvidia[0-9]*"))
    return nvidia or os.path.exists("/dev/kfd") or bool(glob.glob("/dev/dri/renderD*"))
