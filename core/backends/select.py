"""Which backend runs a classify run's towers: ``--backend auto|torch|openvino|onnxruntime``.

The ``auto`` rule (``auto_backend``; ``wwts doctor`` prints its pick and reason):

1. caption: ``auto_caption_backend`` (BLIP's greedy captions on OpenVINO on an x86 CPU, the rest
   on torch; see the README);
2. a device only OpenVINO names (``GPU.1``, ``NPU``, ``AUTO``, ``HETERO:GPU,CPU``) picks OpenVINO;
3. a CUDA or Apple MPS device that torch proves picks torch (fp16/bf16 autocast on the GPU; the
   OpenVINO backend never uses CUDA);
4. a CPU with AMX-BF16 picks torch for a float run: torch's bf16 autocast runs on AMX there (a
   ViT-B/16 block measured 3.55x float32 on a 2-core Sapphire Rapids-class VM, where whole-process
   classify of 92 photos took 10.7 s against 19.9 s float32 and 18.8 s OpenVINO f32; with the
   torch-free start of a saved conversion, OpenVINO f32 still took 11.4 s against torch bf16's
   9.7 s), while OpenVINO 2026.4's default bf16 path returned NaN embeddings beside torch, and
   crashed (SIGSEGV) on a partial batch without torch, on that same VM;
5. with OpenVINO installed: an x86 CPU, or an Intel GPU / NPU that OpenVINO sees, picks OpenVINO
   (its bf16 path ran 10.6-11.4 images/s against torch float32's 3.3 on the issue's 2-core AMD
   VM, image tower, batch 8; its NNCF int8 17-21);
6. ``--quantize int8`` without OpenVINO picks ONNX Runtime's dynamic int8 when installed
   (12-15 images/s there);
7. otherwise torch. ONNX Runtime is never picked for a float run: its float32 (3.6-4.7 images/s)
   trailed torch bf16 autocast (6.7) on that machine.

The text tower may run elsewhere than the image tower (``auto_text_backend``): when rule 4 leaves
the image tower on torch's CPU and OpenVINO is installed, the label text runs on a saved OpenVINO
conversion at f32. Label features are computed once per label set (then read from the embedding
store), so its speed hardly matters; what matters is that a later run with new labels whose photos
are all in the store needs neither torch nor the image tower (``tasks.compiled``): 4.3 s → about
1 s to re-label the 92 bench photos on the AMX machine (``make bench``).

For a classify run on a CPU that rule 5 (or rule 4's text tower) would send to OpenVINO, the engine
then applies the size rule (``route``, ``build.size_rule``): convert only when the photos this model
processes on this machine repay the conversion, else start at once on what finishes first.
A caption run that rule 1 sends to OpenVINO gets the same rule (``build.caption_size_rule``).

A backend asked for by name and not installed is one ``UsageError`` line saying what to install.
"""

from __future__ import annotations

import importlib.util
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import UsageError

BACKENDS = ("auto", "torch", "openvino", "onnxruntime")
#: The package each backend imports, and the line that installs it.
MODULES = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
INSTALL = {"openvino": 'pip install "wwts[openvino]"', "onnxruntime": 'pip install "wwts[onnx]"'}
NAMES = {"torch": "PyTorch", "openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}
#: Device strings that only OpenVINO understands (case-insensitive): plugin names with an
#: optional index, virtual devices with a list, or a bare GPU number.
_OPENVINO_ONLY = re.compile(r"^(\d+|(gpu|npu)(\.\d+)?|(auto|hetero|multi|batch)(:[\w.,]+)?)$", re.IGNORECASE)
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


@dataclass(frozen=True)
class BackendChoice:
    """The backend a run uses and how it was chosen.

    Attributes:
        name: ``torch``, ``openvino`` or ``onnxruntime``.
        reason: why, in words (``"auto: OpenVINO is installed and this is an x86 CPU"``).
        device: the device as the backend names it (``cpu`` / ``cuda:0`` for torch, ``CPU`` /
            ``GPU.0`` / ``HETERO:GPU,CPU`` for OpenVINO, ``cpu`` / ``cuda:0`` for ONNX Runtime);
            ``resolve_device`` replaces a request with what the backend really has.
        dtype: the requested precision (``auto``, ``float32``, ``bfloat16``, ``float16``).
        int8: ``--quantize int8`` (OpenVINO: NNCF static int8; ONNX Runtime: dynamic int8).
        threads: CPU threads the runtime may use (``None``: its default).
        providers: ONNX Runtime's execution providers in order (after ``resolve_device``).
        calibration_paths: images NNCF calibrates int8 on (the run's first ones).
        text: the text tower's backend when it differs from ``name`` (``openvino`` beside a torch
            image tower on the CPU, see ``auto_text_backend``); empty: ``name``.
        gate: held-out photos the int8 gate checks an int8 image tower on against float before
            the run uses it (``int8_gate``; set when ``--backend auto``'s size rule chose int8 and
            this model's int8 was never checked on this machine); empty: no check.
        model: the model's key in this machine's run records (``hardware.speeds``; set by the
            size rule, so the gate's verdict is remembered); empty: none.
    """

    name: str
    reason: str
    device: str = "auto"
    dtype: str = "auto"
    int8: bool = False
    threads: int | None = None
    providers: tuple[str, ...] = ()
    calibration_paths: tuple[Path, ...] = field(default=(), compare=False)
    text: str = ""
    gate: tuple[Path, ...] = field(default=(), compare=False)
    model: str = ""

    @property
    def text_backend(self) -> str:
        """The backend of the text tower (``text`` or ``name``)."""
        return self.text or self.name


def installed(name: str) -> bool:
    """True when backend ``name``'s package can be imported (``torch`` always)."""
    module = MODULES.get(name)
    return module is None or importlib.util.find_spec(module) is not None


def require(name: str, *, int8: bool = False) -> None:
    """Check that backend ``name`` (and NNCF for OpenVINO int8) is installed.

    Raises:
        UsageError: it is not: one line naming what to install.
    """
    if not installed(name):
        raise UsageError(f"--backend {name} needs {NAMES[name]}, which is not installed: {INSTALL[name]}")
    if name == "openvino" and int8 and importlib.util.find_spec("nncf") is None:
        raise UsageError(f"--backend openvino --quantize int8 needs NNCF, which is not installed: {INSTALL[name]}")


def is_x86() -> bool:
    """True on an x86 / x86-64 CPU (what OpenVINO's CPU plugin is built for first)."""
    return platform.machine().lower() in _X86


def openvino_only(device: str) -> bool:
    """True for a device string only OpenVINO understands (``GPU.1``, ``NPU``, ``AUTO``, ``0``)."""
    return bool(_OPENVINO_ONLY.match(device)) and device.lower() != "auto"


def auto_backend(device: str, task: str, int8: bool, *, torch_device: Callable[[], str],
                 openvino_devices: Callable[[], list[str]],
                 cpu_has_amx: Callable[[], bool] = lambda: False) -> tuple[str, str]:
    """``(backend, reason)`` for ``--backend auto`` (the rule in this module's docstring).

    Args:
        device: the ``--device`` string.
        task: ``classify`` or ``caption``.
        int8: ``--quantize int8`` was asked.
        torch_device: returns the type (``cuda``, ``mps``, ``cpu``...) of the device torch
            proves for ``device``; called only when the rule needs it.
        openvino_devices: OpenVINO's device names (``["CPU", "GPU.0"]``); called only when
            OpenVINO is installed.
        cpu_has_amx: True when the CPU has AMX-BF16 (``hardware.cpu_features()``).
    """
    if task == "caption":
        return auto_caption_backend(device, int8, torch_device)
    if task != "classify":
        return "torch", f"auto: {task} runs on PyTorch"
    ov = installed("openvino")
    if openvino_only(device):
        return "openvino", f"auto: {device} is an OpenVINO device name"
    kind = torch_device()
    if kind in ("cuda", "mps") and not int8:
        return "torch", f"auto: PyTorch on {kind.upper()} (half-precision autocast; OpenVINO never uses CUDA)"
    if kind == "cpu" and not int8 and cpu_has_amx():
        return "torch", ("auto: PyTorch bf16 autocast on this CPU's AMX (faster here than OpenVINO at f32; "
                         "OpenVINO's bf16 gave NaN or crashed on an AMX machine)")
    if ov:
        names = openvino_devices()
        if is_x86() or any(n.split(".")[0] in ("GPU", "NPU") for n in names):
            where = "this x86 CPU" if is_x86() else "this Intel GPU/NPU"
            return "openvino", f"auto: OpenVINO is installed and runs {where} faster than PyTorch eager"
    if int8 and installed("onnxruntime"):
        return "onnxruntime", "auto: --quantize int8 with ONNX Runtime's dynamic int8 (OpenVINO is not installed)"
    if int8:
        raise UsageError("--quantize int8 runs on OpenVINO (NNCF static int8) or ONNX Runtime (dynamic int8), "
                         f"neither is installed: {INSTALL['openvino']} (or {INSTALL['onnxruntime']})")
    why = "not an x86 CPU" if ov else f"OpenVINO is not installed ({INSTALL['openvino']} may be faster)"
    return "torch", f"auto: PyTorch ({why})"


def auto_caption_backend(device: str, int8: bool, torch_device: Callable[[], str]) -> tuple[str, str]:
    """``(backend, reason)`` of ``--backend auto`` for caption: OpenVINO on an x86 CPU where it is
    installed and the run is a float one, else torch. Measured (issue 24, 2-core AMD EPYC Zen 4,
    busy machine, BLIP-base, 4 bench photos x 20 tokens, one process): OpenVINO f32 117.7 s against
    torch float32's 263.6 s (the same tokens). The task keeps torch for what OpenVINO does not run
    (other families, beams: ``CaptionTask.setup``); ``build.caption_size_rule`` then weighs the
    conversion against the run's size, as for classify."""
    if int8 or not installed("openvino") or not is_x86() or device.lower() not in ("auto", "cpu"):
        return "torch", "auto: caption runs on PyTorch"
    if torch_device() != "cpu":
        return "torch", "auto: caption runs on PyTorch (an accelerator)"
    return "openvino", ("auto: BLIP's greedy captions on OpenVINO f32 (2.2x torch float32 on this class of "
                        "x86 CPU, same tokens); other families and beams on PyTorch")


#: Added to the ``auto`` reason when the text tower runs on OpenVINO beside torch's image tower.
TEXT_ON_OPENVINO = "; label text on OpenVINO f32, so new labels need no torch once the photos are stored"


def auto_text_backend(name: str, kind: str | None, task: str, int8: bool) -> str:
    """The text tower's backend under ``--backend auto`` once the image tower's is ``name``:
    ``openvino`` when the image tower runs on torch's CPU (``kind`` is the proven torch device
    type, ``None`` when the rule never probed one), OpenVINO is installed, the CPU is x86 and the
    run is a float classify run; else ``name`` (the module docstring says why)."""
    if name == "torch" and kind == "cpu" and task == "classify" and not int8 and is_x86() and installed("openvino"):
        return "openvino"
    return name


def auto_backends(device: str, task: str, int8: bool, *, torch_device: Callable[[], str],
                  openvino_devices: Callable[[], list[str]],
                  cpu_has_amx: Callable[[], bool] = lambda: False) -> tuple[str, str, str]:
    """``(backend, reason, text backend)`` for ``--backend auto``: ``auto_backend``'s pick, and
    ``auto_text_backend``'s for the text tower (named in the reason when it differs). Arguments as
    for ``auto_backend``; the torch device is proven at most once."""
    kinds: list[str] = []

    def probe() -> str:
        kinds.append(torch_device())
        return kinds[-1]

    name, reason = auto_backend(device, task, int8, torch_device=probe, openvino_devices=openvino_devices,
                                cpu_has_amx=cpu_has_amx)
    text = auto_text_backend(name, kinds[-1] if kinds else None, task, int8)
    return name, reason + (TEXT_ON_OPENVINO if text != name else ""), text


def check_request(backend: str, task: str, int8: bool) -> None:
    """Refuse combinations no backend runs: ONNX Runtime int8 for caption, and torch int8 for
    classify (retired: ``torch.ao.quantization.quantize_dynamic`` is deprecated in torch 2.13).

    Raises:
        UsageError: one line saying what to use instead.
    """
    if task == "caption" and backend == "openvino":
        require(backend, int8=int8)
        return
    if task == "caption" and backend == "onnxruntime":
        if int8:
            raise UsageError("--backend onnxruntime runs captions at float32: --quantize int8 for captions runs "
                             "on --backend openvino (NNCF int8 weights) or torch")
        require(backend)
        return
    if task != "classify" and backend not in ("auto", "torch"):
        raise UsageError(f"--backend {backend}: {task} runs on torch only (--backend torch or auto)")
    if task == "classify" and backend == "torch" and int8:
        raise UsageError("--quantize int8 with --backend torch is retired (torch.ao's dynamic quantization is "
                         "deprecated in torch 2.13): use --backend openvino (NNCF static int8) or --backend "
                         "onnxruntime (dynamic int8), or leave out --backend")
    if backend in MODULES:
        require(backend, int8=int8)
