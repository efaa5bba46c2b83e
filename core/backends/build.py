"""One entry point per step for the engine and the tasks: ``plan_backend`` (which backend and
device, before the model loads), ``build_towers`` (the two towers, after it loads), and the
torch-free start on a saved export: ``load_export`` / ``export_towers``, with ``save_facts``
recording what scoring needs from the run that loaded the model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..errors import ModelLoadError, UsageError, WwtsError, describe
from . import devices, export
from .tower import Tower
from .select import BACKENDS, NAMES, BackendChoice, auto_backends, check_request

if TYPE_CHECKING:  # plan_backend runs without torch (a torch-free OpenVINO / ONNX Runtime run)
    import torch

log = logging.getLogger(__name__)

#: Environment variable naming the backend ``--backend auto`` uses on this machine.
ENV_BACKEND = "WWTS_BACKEND"


def plan_backend(backend: str, device: str, *, task: str, dtype: str = "auto", int8: bool = False,
                 threads: int | None = None, paths: Sequence[Path] = (),
                 torch_device: Callable[[], str] = lambda: "cpu", reason: str = "", model: str = "",
                 int8_allowed: bool = True) -> BackendChoice:
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
        model: the model folder (or hub id) of a classify run: ``--backend auto`` on a CPU then
            weighs converting against the run's size (``route``, ``size_rule``); empty: it does not.
        int8_allowed: the size rule may choose int8 (not with ``--dtype float32`` or
            ``--quantize none``).

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
    if backend == "auto" and model and task == "classify" and not int8 and device.lower() in ("auto", "cpu") \
            and (name == "openvino" or text == "openvino"):  # a CPU that OpenVINO would run
        choice = size_rule(choice, model, len(paths), paths, int8_allowed=int8_allowed and dtype == "auto")
    elif backend == "auto" and model and task == "caption" and name == "openvino":  # BLIP greedy on this CPU
        choice = caption_size_rule(choice, model, len(paths))
    if choice.name == "openvino":
        return replace(choice, device=devices.resolve_openvino_device(device))
    if choice.name == "onnxruntime":
        label, providers = devices.resolve_ort_providers(device)
        return replace(choice, device=label, providers=providers)
    return choice


def size_rule(choice: BackendChoice, model: str, images: int, paths: Sequence[Path], *,
              int8_allowed: bool) -> BackendChoice:
    """``choice`` (``--backend auto``'s pick for a classify run on this CPU) with the route of
    ``route.choose``: PyTorch at once, a saved conversion, or a conversion (float or int8) that this
    model's photos on this machine repay. Routes from this machine's records (``hardware.speeds``);
    int8 only when allowed, NNCF is installed and the gate never refused it here; an int8 never
    checked here gets ``gate`` photos. The reason says the pick and why."""
    import importlib.util

    from ..hardware import cpu_dtype_without_torch, model_record
    from . import int8_gate, route

    threads = choice.threads or 1
    record = model_record(model, threads)
    verdict = record["int8"].get("passed")
    amx = devices.cpu_has_amx()
    runtimes = [] if amx else ["openvino/float"]  # select's rule 4: torch bf16 beats OpenVINO f32 on AMX
    # int8: OpenVINO's NNCF static int8 where the CPU multiplies int8 in one instruction (VNNI, AMX);
    # else ONNX Runtime's dynamic int8, whose AVX2 kernels still beat float (devices.INT8_DOT_FEATURES)
    fast_int8 = devices.cpu_has_int8_dot()
    int8_path, needs = ("openvino/int8", "nncf") if fast_int8 else ("onnxruntime/int8", "onnxruntime")
    if int8_allowed and verdict is not False and importlib.util.find_spec(needs) is not None:
        runtimes.append(int8_path)
    saved = {path: load_export(model, path.split("/")[0], path.endswith("int8")) is not None for path in runtimes}
    if verdict is None:
        saved[int8_path] = False  # never checked here: the gate runs (a saved tower is reused)
    torch_dtype = cpu_dtype_without_torch("auto", 8, threads) or ("bfloat16" if amx else "float32")
    pick, why = route.choose(images, record["images"], route.routes_for(torch_dtype, runtimes, saved, record["paths"]))
    reason = f"auto: {why}" + ("" if fast_int8 or not pick.int8 else
                               " (ONNX Runtime's dynamic int8: this CPU has no VNNI or AMX int8 instructions)")
    if pick.backend == "torch":
        # label text on OpenVINO where its conversion is saved, or where select's rule puts it (AMX:
        # torch-free relabelling); else on the loaded torch model, converting nothing
        text = "openvino" if choice.text == "openvino" or load_export(model, "torch", False) is not None else ""
        return replace(choice, name="torch", reason=reason, text=text, model=model)
    calibration, gate = int8_gate.split(paths, 300) if pick.int8 and verdict is None else (tuple(paths[:300]), ())
    if pick.int8 and verdict is None and not gate:
        return replace(choice, name="openvino", reason=reason + " (too few photos to check int8: float)",
                       text="", model=model)
    return replace(choice, name=pick.backend, reason=reason, int8=pick.int8, text="", model=model,
                   calibration_paths=calibration if pick.int8 else (), gate=gate)


def caption_size_rule(choice: BackendChoice, model: str, images: int) -> BackendChoice:
    """``choice`` (``--backend auto``'s OpenVINO pick for BLIP's greedy captions on this CPU) with
    the route of ``route.choose`` between PyTorch (float32, or bf16 where ``select_dtype``'s rule
    takes it here) and OpenVINO float (saved, or converted when this model's photos on this machine
    repay converting BLIP's two towers), from this machine's caption records and
    ``route.CAPTION_PRIORS``. The reason says the pick and why."""
    from ..hardware import cpu_dtype_without_torch, model_record
    from . import caption_runtime, route

    threads = choice.threads or 1
    record = model_record(model, threads)
    torch_dtype = cpu_dtype_without_torch("auto", 8, threads) or ("bfloat16" if devices.cpu_has_amx() else "float32")
    routes = route.routes_for(torch_dtype, ["openvino/float"], {"openvino/float": caption_runtime.saved(model)},
                              record["paths"], priors=route.CAPTION_PRIORS)
    pick, why = route.choose(images, record["images"], routes)
    return replace(choice, name=pick.backend, reason=f"auto: {why}", model=model)


def model_folder(model: Any) -> str:
    """The folder transformers loaded ``model``'s weights from (``name_or_path``; ``""``: none)."""
    return str(getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", "")
               or "")


def build_towers(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, choice: BackendChoice | None,
                 *, tokens: Callable[[], Mapping[str, Any]] | None, input_size: int | None,
                 prepare: Callable[[Any], torch.Tensor] | None = None,
                 labels: Callable[[], Mapping[str, Any]] | None = None) -> tuple[Tower, Tower]:
    """The image and text towers of a loaded dual encoder on the chosen backend.

    Args:
        model: the loaded torch model (on ``device`` for torch; float32 on the CPU otherwise),
            loaded from a model folder for the backends that convert (it keys the export).
        device / dtype: torch's device and autocast dtype (the torch backend only).
        choice: from ``plan_backend``; ``None`` means torch.
        tokens: gives a tokenizer output of a few label prompts (the text tower's export example;
            called only for a backend that converts).
        input_size: the image side in pixels (recorded with the export, export example).
        prepare: one image → ``pixel_values (1, 3, S, S)`` (OpenVINO int8 calibration).
        labels: gives a tokenizer output of up to ``int8_gate.GATE_PROMPTS`` of the run's label
            prompts (the int8 gate's top-1 agreement; called only when ``choice.gate`` is set).

    Raises:
        ModelLoadError: the model cannot be converted for the backend (the line suggests
            ``--backend torch``).
    """
    if choice is None or choice.name == "torch":
        import torch

        from .torch import TorchTower

        image = TorchTower(model, device, dtype, "image")
        if choice is not None and choice.text_backend == "openvino" and tokens is not None:
            try:
                return image, _openvino_text(model, choice, tokens(), input_size)
            except Exception as exc:  # the run goes on with torch's text tower (float32 as well)
                log.warning("label text runs on PyTorch: the text tower could not run on OpenVINO (%s)",
                            describe(exc))
        return image, TorchTower(model, device, torch.float32, "text")
    if tokens is None:
        raise ValueError("the label tokens are needed to convert the text tower")
    try:
        if choice.gate:
            return _gated(model, choice, tokens(), input_size, prepare, labels)
        return _convert(model, choice, tokens(), input_size, prepare)
    except WwtsError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot run the model on {NAMES[choice.name]}: {describe(exc)} "
                             "(--backend torch runs it on PyTorch)") from exc


def _openvino_text(model: torch.nn.Module, choice: BackendChoice, tokens: Mapping[str, Any],
                   input_size: int | None) -> Tower:
    """The text tower on OpenVINO's CPU at f32, beside a torch image tower on the CPU."""
    from . import openvino

    return openvino.build_text(model, folder=model_folder(model), device="CPU", threads=choice.threads,
                               input_size=input_size, tokens=tokens)


def _convert(model: torch.nn.Module, choice: BackendChoice, tokens: Mapping[str, Any], input_size: int | None,
             prepare: Callable[[Any], torch.Tensor] | None) -> tuple[Tower, Tower]:
    folder = model_folder(model)
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
        return openvino.build(model, folder=folder, device=choice.device, dtype=choice.dtype, int8=choice.int8,
                              threads=choice.threads, input_size=input_size, tokens=tokens, calibration=calibration)
    from . import onnxruntime

    return onnxruntime.build(model, folder=folder, providers=choice.providers, dtype=choice.dtype,
                             int8=choice.int8, threads=choice.threads, input_size=input_size, tokens=tokens)


def _gated(model: torch.nn.Module, choice: BackendChoice, tokens: Mapping[str, Any], input_size: int | None,
           prepare: Callable[[Any], torch.Tensor] | None,
           labels: Callable[[], Mapping[str, Any]] | None) -> tuple[Tower, Tower]:
    """The runtime's towers (OpenVINO NNCF or ONNX Runtime dynamic int8) with the image tower at
    int8 when the int8 gate passes on the held-out photos ``choice.gate`` (``int8_gate.compare``
    against the float conversion, which is made too: it is the fallback), else at float; the verdict is said once and remembered for this model on this machine
    (``hardware.speeds.record_int8``: a refused int8 is not tried again)."""
    import numpy as np

    from ..hardware import record_int8
    from . import int8_gate, openvino
    from .tower import normalized

    if prepare is None:
        raise ValueError("the int8 gate needs the image preparation")
    float_image, text = _convert(model, replace(choice, int8=False), tokens, input_size, prepare)
    int8_image, _ = _convert(model, choice, tokens, input_size, prepare)
    pixels = np.concatenate(openvino.calibration_arrays(choice.gate, prepare, input_size))
    features = normalized(np.asarray(text.encode(labels()))) if labels is not None else None
    verdict = int8_gate.compare(float_image, int8_image, pixels, features)
    record_int8(choice.model or model_folder(model), choice.threads or 1, verdict.as_record())
    if verdict.passed:
        log.warning("%s: this run and later ones use int8 (remembered for this model on this machine)", verdict.line())
        return int8_image, text
    log.warning("%s: this run uses float, and so will later ones (remembered for this model on this machine; "
                "--quantize int8 still asks for it)", verdict.line())
    return float_image, text


def export_path(folder: str | os.PathLike, backend: str) -> Path:
    """The ``export.json`` of the weights in model ``folder`` for ``backend`` (``torch``: the
    OpenVINO export its text tower comes from), for the installed runtime version (imported here).

    Raises:
        OSError: ``folder`` is not a model folder.
    """
    runtime = export.runtime_of(backend)
    if runtime == "openvino":
        from .openvino import version
    else:
        from .onnxruntime import version
    return export.export_dir(folder, runtime, version()) / export.EXPORT


def load_export(folder: str | os.PathLike, backend: str, int8: bool) -> dict[str, Any] | None:
    """What a run on ``backend`` needs to start without torch or transformers, from the export of the
    weights in model ``folder``: ``{"facts": ..., "towers": {"image": entry, "text": entry}}`` (no
    ``image`` for ``torch``: its image tower is torch's), each tower entry verified (``export.verified``:
    a corrupt one is removed) and carrying ``dir``. ``None`` when there is no such export (first run,
    changed weights, cleared cache), it has no facts yet, or a tower it needs (the image tower at
    ``int8`` or float, the text tower) is missing, stale or corrupt: the run loads the model with
    transformers, which converts again where needed."""
    try:
        where = export_path(folder, backend).parent
    except OSError:
        return None
    facts = export.read_export(where).get("facts")
    if not isinstance(facts, dict):
        return None
    needed = {"text": "text-float"} if backend == "torch" else \
        {"image": f"image-{'int8' if int8 else 'float'}", "text": "text-float"}
    towers = {tower: export.verified(where, name) for tower, name in needed.items()}
    return None if None in towers.values() else {"facts": facts, "towers": towers}


def save_facts(folder: str | os.PathLike, backend: str, facts: dict[str, Any]) -> None:
    """Record ``facts`` (JSON-ready: logit scale and bias, the image processor's configuration...)
    in the export whose towers a run on ``backend`` just built from the weights in ``folder``, so
    the next run starts from it (``load_export``).

    Raises:
        OSError: ``folder`` is not a model folder, or the cache cannot be written.
    """
    export.write_facts(export_path(folder, backend).parent, facts)


def export_towers(saved: dict[str, Any], choice: BackendChoice, input_size: int | None) -> tuple[Tower | None, Tower]:
    """The image and text towers of a verified export (``load_export``) on the run's backend
    ``choice`` (device, ``--dtype``, threads): OpenVINO compiles the saved IR (from its blob cache
    after the first time), ONNX Runtime opens sessions, each when first used where its precision
    is known beforehand (a run served by the embedding store may never need a tower). No torch. On
    ``torch`` it gives ``(None, text tower)``: the caller makes the torch image tower.

    Raises:
        UsageError: ``--dtype`` that ONNX Runtime does not run.
        whatever the runtime raises for a model it cannot load or compile.
    """
    image, text = saved["towers"].get("image"), saved["towers"]["text"]
    names = list(text["fields"].get("inputs") or ["input_ids"])
    if choice.name in ("torch", "openvino"):
        from . import openvino

        device = "CPU" if choice.name == "torch" else choice.device
        text_tower = openvino.text_tower(Path(text["dir"]), device, choice.threads, names, text,
                                         lazy=device == "CPU")
        if image is None:
            return None, text_tower
        return openvino.image_tower(Path(image["dir"]), device, choice.dtype, choice.threads, input_size, image,
                                    lazy=True), text_tower
    from . import onnxruntime

    onnxruntime.check_dtype(choice.dtype)
    return (onnxruntime.onnx_tower(Path(image["dir"]), "image", choice.providers, choice.threads, image, lazy=True),
            onnxruntime.onnx_tower(Path(text["dir"]), "text", choice.providers, choice.threads, text, names=names,
                                   lazy=True))
