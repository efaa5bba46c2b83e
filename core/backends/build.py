"""One entry point per step for the engine and the tasks: ``plan_backend`` (which backend and
device, before the model loads) and ``build_encoders`` (the two encoders, after it loads).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..errors import ModelLoadError, UsageError, WwtsError, describe
from . import cache, devices
from .base import ImageEncoder, TextEncoder
from .select import BACKENDS, NAMES, BackendChoice, auto_backends, check_request

if TYPE_CHECKING:  # plan_backend runs without torch (a torch-free OpenVINO / ONNX Runtime run)
    import torch

log = logging.getLogger(__name__)

#: Environment variable naming the backend ``--backend auto`` uses on this machine.
ENV_BACKEND = "WWTS_BACKEND"


def plan_backend(backend: str, device: str, *, task: str, dtype: str = "auto", int8: bool = False,
                 threads: int | None = None, paths: Sequence[Path] = (),
                 torch_device: Callable[[], str] = lambda: "cpu", reason: str = "") -> BackendChoice:
    """The backend of a run and its device, checked before the model loads.

    Args:
        backend: ``--backend`` (``auto``, ``torch``, ``openvino``, ``onnxruntime``).
        device: ``--device``, as the user typed it.
        task: ``classify`` or ``caption``.
        dtype: ``--dtype``.
        int8: ``--quantize int8``.
        threads: the run's CPU threads.
        paths: the run's images (their first ones calibrate OpenVINO int8).
        torch_device: proves the torch device for ``device`` and returns its type; called only by
            the ``auto`` rule, never for ``--backend openvino`` (which must not touch CUDA).
        reason: why this backend, when the caller knows (default: ``--backend NAME``).

    ``--backend auto`` takes the backend named by the environment variable ``WWTS_BACKEND``
    when it is set (a machine-wide preference; caption ignores one other than torch), else
    the rule of ``select.auto_backends`` (the text tower's backend included).

    Returns:
        A ``BackendChoice`` whose ``device`` is the backend's own name for the device
        (``GPU.0``; for ONNX Runtime its label and ``providers``).

    Raises:
        UsageError: the backend is not installed, or it cannot run this task / quantization.
        DeviceError: the backend has no such device (the line lists the ones it has).
    """
    preset = os.environ.get(ENV_BACKEND, "").strip().lower()
    # a torch preset yields to the rule for classify int8, which only the other backends run
    if backend == "auto" and preset and preset != "auto" and not (preset == "torch" and int8 and task == "classify"):
        if preset not in BACKENDS:
            raise UsageError(f"{ENV_BACKEND}={preset}: valid: {', '.join(BACKENDS)}")
        if task == "classify" or preset == "torch":
            check_request(preset, task, int8)
            return plan_backend(preset, device, task=task, dtype=dtype, int8=int8, threads=threads, paths=paths,
                                torch_device=torch_device, reason=f"{ENV_BACKEND}={preset}")
    check_request(backend, task, int8)
    if backend == "auto":
        name, reason, text = auto_backends(device, task, int8, torch_device=torch_device,
                                           openvino_devices=devices.openvino_device_names,
                                           cpu_has_amx=devices.cpu_has_amx)
    else:
        name, reason, text = backend, reason or "--backend " + backend, backend
    choice = BackendChoice(name, reason, device=device, dtype=dtype, int8=int8, threads=threads,
                           calibration_paths=tuple(paths[:300]) if int8 else (), text="" if text == name else text)
    if name == "openvino":
        return replace(choice, device=devices.resolve_openvino_device(device))
    if name == "onnxruntime":
        label, providers = devices.resolve_ort_providers(device)
        return replace(choice, device=label, providers=providers)
    return choice


def model_identity(model: torch.nn.Module) -> dict[str, Any]:
    """What identifies the weights of ``model`` in a cache key: the folder it was loaded from
    (``name_or_path``) with its files' fingerprint (``cache.model_fingerprint``) and the model
    class; for a model not loaded from a folder, the SHA-256 of its state dict instead."""
    folder = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return identity_of(str(folder) if folder else None, type(model).__name__, model)


def identity_of(folder: str | None, class_name: str, model: Any = None) -> dict[str, Any]:
    """``model_identity`` from its parts: the folder (or hub id) the model was loaded from and its
    class name; ``model`` (a torch module) is hashed only when there is no folder to fingerprint."""
    identity: dict[str, Any] = {"model": str(folder or class_name), "class": class_name,
                                **cache.model_fingerprint(folder)}
    if identity["folder"] is None and model is not None:
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        identity["weights_sha256"] = digest.hexdigest()
    return identity


def build_encoders(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, choice: BackendChoice | None,
                   *, tokens: Callable[[], Mapping[str, Any]] | None, input_size: int | None,
                   prepare: Callable[[Any], torch.Tensor] | None = None) -> tuple[ImageEncoder, TextEncoder]:
    """The image and text encoders of a dual encoder on the chosen backend.

    Args:
        model: the loaded torch model (on ``device`` for torch; float32 on the CPU otherwise).
        device / dtype: torch's device and autocast dtype (the torch backend only).
        choice: from ``plan_backend``; ``None`` means torch.
        tokens: gives a tokenizer output of a few label prompts (the text tower's export example;
            called only for a backend that converts).
        input_size: the image side in pixels (cache key, export example).
        prepare: one image → ``pixel_values (1, 3, S, S)`` (OpenVINO int8 calibration).

    Raises:
        ModelLoadError: the model cannot be converted for the backend (the line suggests
            ``--backend torch``).
    """
    if choice is None or choice.name == "torch":
        import torch

        from .torch import TorchImageEncoder, TorchTextEncoder

        image = TorchImageEncoder(model, device, dtype)
        if choice is not None and choice.text_backend == "openvino" and tokens is not None:
            try:
                return image, _openvino_text(model, choice, tokens(), input_size)
            except Exception as exc:  # the run goes on with torch's text tower (float32 as well)
                log.warning("label text runs on PyTorch: the text tower could not run on OpenVINO (%s)",
                            describe(exc))
        return image, TorchTextEncoder(model, device, torch.float32)
    if tokens is None:
        raise ValueError("the label tokens are needed to convert the text tower")
    try:
        return _convert(model, choice, tokens(), input_size, prepare)
    except WwtsError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot run the model on {NAMES[choice.name]}: {describe(exc)} "
                             "(--backend torch runs it on PyTorch)") from exc


def _openvino_text(model: torch.nn.Module, choice: BackendChoice, tokens: Mapping[str, Any],
                   input_size: int | None) -> TextEncoder:
    """The text tower on OpenVINO's CPU at f32, beside a torch image tower on the CPU."""
    from . import openvino

    return openvino.build_text(model, base_fields=model_identity(model), device="CPU", threads=choice.threads,
                               input_size=input_size, tokens=tokens)


def _convert(model: torch.nn.Module, choice: BackendChoice, tokens: Mapping[str, Any], input_size: int | None,
             prepare: Callable[[Any], torch.Tensor] | None) -> tuple[ImageEncoder, TextEncoder]:
    base = model_identity(model)
    if choice.name == "openvino":
        from . import openvino

        calibration = None
        if choice.int8:
            if prepare is None or not choice.calibration_paths:
                raise UsageError("--quantize int8 with OpenVINO needs images to calibrate on")
            log.warning("int8 calibration uses the first %d of this run's images",
                        min(len(choice.calibration_paths), openvino.CALIBRATION_IMAGES))

            def calibration():
                return openvino.calibration_arrays(choice.calibration_paths, prepare, input_size)
        return openvino.build(model, base_fields=base, device=choice.device, dtype=choice.dtype, int8=choice.int8,
                              threads=choice.threads, input_size=input_size, tokens=tokens, calibration=calibration)
    from . import onnxruntime

    return onnxruntime.build(model, base_fields=base, providers=choice.providers, dtype=choice.dtype,
                             int8=choice.int8, threads=choice.threads, input_size=input_size, tokens=tokens)
