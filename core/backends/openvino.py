"""OpenVINO backend: a dual encoder's towers converted with ``openvino.convert_model``, saved in
the model's export (``export.py``), compiled for an OpenVINO device, run by ``base.RuntimeTower``.

Conversion: ``ov.convert_model`` traces the tower module (``towers.py``) on an example input
(OpenVINO's recommended path for PyTorch models, docs "Converting a PyTorch Model"); the result is
saved with ``ov.save_model(..., compress_to_fp16=False)`` so the float model holds the float32
weights. ``--quantize int8`` (image tower only) runs NNCF's post-training static quantization
(``nncf.quantize`` with ``ModelType.TRANSFORMER``, NNCF docs "Post-training Quantization") on up to
``CALIBRATION_IMAGES`` of the run's own images, and is saved in the export like a conversion.

Precision: ``--dtype auto`` leaves OpenVINO's default (``bf16`` inference on CPUs with AVX512-BF16
or AMX, ``f32`` otherwise; fp16 on GPUs), ``float32`` / ``bfloat16`` / ``float16`` set
``INFERENCE_PRECISION_HINT``. The text tower always runs at ``f32``: the labels are encoded once.
Compiled models go to OpenVINO's own blob cache (``CACHE_DIR``), so later runs skip compilation.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import numpy as np

from ..arrays import as_numpy
from . import export
from .tower import LazyTower, RuntimeTower, Tower

if TYPE_CHECKING:  # torch is needed to convert, never to run a saved conversion
    import torch

log = logging.getLogger(__name__)

#: Most images NNCF calibrates int8 on (NNCF's default ``subset_size`` is 300).
CALIBRATION_IMAGES = 300
#: ``--dtype`` → OpenVINO ``INFERENCE_PRECISION_HINT``.
PRECISION_HINTS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
#: OpenVINO element type name → the dtype name wwts reports.
DTYPE_NAMES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}
#: Counts of conversions made in this process, by tower (read by tests and the bench).
CONVERSIONS: dict[str, int] = {"image": 0, "text": 0}


def version() -> str:
    """OpenVINO's version (``2026.4.1-...``)."""
    import openvino as ov

    return ov.get_version()


def _announce(model: torch.nn.Module, tower: str, precision: str, what: str) -> None:
    """Say, before a conversion, what it is and about how long it takes (from this machine's
    earlier conversions when there are some)."""
    from .towers import tower_parameters

    estimate = export.estimate_seconds("openvino", precision, tower_parameters(model, tower))
    about = f"about {estimate:.0f} s" if estimate is not None else "this takes a while for a full-size model"
    log.warning("%s the %s tower for OpenVINO (first run only, %s; saved in %s)", what, tower, about,
                export.cache_root())


def saved_tower(model: torch.nn.Module, folder: str, fields: dict[str, Any], example: Any,
                calibration: Callable[[], list[np.ndarray]] | None = None) -> dict[str, Any]:
    """The tower ``fields["tower"]`` at ``fields["precision"]`` in the OpenVINO export of the weights
    in model ``folder`` (``export.export_dir``), converted
    (and, with ``calibration``, quantized to int8) first when no verified copy made for ``fields``
    is there.

    Returns:
        its ``export.json`` entry, with ``dir`` (the folder holding ``model.xml``).

    Raises:
        OSError: ``folder`` is not a model folder (no identity to key the export by).
        whatever the exporter or NNCF raise (nothing is saved then).
    """
    tower, precision = fields["tower"], fields["precision"]
    where = export.export_dir(folder, "openvino", version())
    name = export.entry_name(fields, export.native_image_size(model))
    entry = export.verified(where, name, fields)
    if entry is not None:
        return entry
    _announce(model, tower, precision, "quantizing to int8" if calibration else "converting")

    def write(tmp: Path) -> dict:
        import openvino as ov
        import torch

        from .towers import ExportModule, tower_parameters

        t0 = time.perf_counter()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's TracerWarnings: shapes stay dynamic
            ov_model = ov.convert_model(ExportModule(model, tower).eval(), example_input=example)
        CONVERSIONS[tower] += 1
        extra = {"parameters": tower_parameters(model, tower)}
        if calibration is not None:
            ov_model, extra["calibration"] = quantize_static(ov_model, calibration)
        ov.save_model(ov_model, tmp / "model.xml", compress_to_fp16=False)
        log.warning("%s tower ready for OpenVINO in %.1f s", tower, time.perf_counter() - t0)
        return extra

    return export.build_tower(where, name, fields, write,
                              weights_folder=folder, version=version())


def quantize_static(ov_model: Any, calibration: Callable[[], list[np.ndarray]], *,
                    transformer: bool = True) -> tuple[Any, str]:
    """NNCF static int8 of ``ov_model`` on the arrays ``calibration()`` gives
    (``pixel_values (1, 3, S, S)`` each), with NNCF's transformer recipe (``ModelType.TRANSFORMER``)
    or, ``transformer=False``, its default (CNN) one. Returns the model and which images calibrated it.

    Raises:
        ValueError: no calibration image could be read.
    """
    import nncf

    items = calibration()
    if not items:
        raise ValueError("no image could be read to calibrate int8")
    quantized = nncf.quantize(ov_model, nncf.Dataset(items), subset_size=len(items),
                              model_type=nncf.ModelType.TRANSFORMER if transformer else None)
    return quantized, f"{len(items)} images"


def compile_model(path: Path, device: str, hint: str | None, threads: int | None) -> Any:
    """``Core.compile_model`` of the IR at ``path`` on ``device`` with the precision ``hint``
    (``None``: OpenVINO's default), the latency performance hint, ``threads`` on the CPU, and
    OpenVINO's compiled-blob cache (``CACHE_DIR``)."""
    from .devices import openvino_core

    core = openvino_core()
    config: dict[str, Any] = {"CACHE_DIR": str(export.compiled_dir()), "PERFORMANCE_HINT": "LATENCY"}
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    if device == "CPU" and threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return core.compile_model(core.read_model(path), device, config)


def inference_dtype(compiled: Any) -> str:
    """The dtype a compiled model computes in (``bfloat16``, ``float32``...), as OpenVINO reports it."""
    try:
        value = compiled.get_property("INFERENCE_PRECISION_HINT")
    except Exception:  # AUTO / HETERO do not report one
        return "device default"
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return DTYPE_NAMES.get(name, name)


def runner(compiled: Any, tower: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """``RuntimeTower``'s ``run`` on a compiled model: an image batch through one reused infer
    request (input 0), token arrays by name."""
    if tower == "text":
        return lambda inputs: compiled(inputs)[compiled.output(0)]
    request = compiled.create_infer_request()
    return lambda inputs: request.infer({0: inputs["pixel_values"]})[compiled.output(0)]


def build(model: torch.nn.Module, *, folder: str, device: str, dtype: str, int8: bool, threads: int | None,
          input_size: int | None, tokens: Mapping[str, Any],
          calibration: Callable[[], list[np.ndarray]] | None) -> tuple[Tower, Tower]:
    """Both towers on OpenVINO ``device`` (converted or loaded from the export, compiled).

    Args:
        model: the loaded torch dual encoder (float32, CPU).
        folder: the model folder its weights were loaded from (keys the export).
        device: an OpenVINO device string (already checked by ``devices.resolve_openvino_device``).
        dtype: ``auto`` or a ``--dtype`` name (the image tower's precision hint).
        int8: quantize the image tower with NNCF (``calibration`` gives its images).
        threads: CPU inference threads.
        input_size: the image side in pixels (recorded with the tower; 224 when unknown).
        tokens: the label prompts' tokenizer output (the text tower's example input).

    Raises:
        OSError: ``folder`` is not a model folder; whatever the exporter, NNCF or OpenVINO raise.
    """
    from .towers import example_image

    fields = {"tower": "image", "precision": "int8" if int8 else "float", "input_size": input_size}
    if int8:
        import nncf

        fields.update(nncf=nncf.__version__, calibration_max=CALIBRATION_IMAGES)
    entry = saved_tower(model, folder, fields, {"pixel_values": example_image(input_size)},
                        calibration if int8 else None)
    image = image_tower(Path(entry["dir"]), device, dtype, threads, input_size, entry)
    return image, build_text(model, folder=folder, device=device, threads=threads, input_size=input_size,
                             tokens=tokens)


def build_text(model: torch.nn.Module, *, folder: str, device: str, threads: int | None,
               input_size: int | None, tokens: Mapping[str, Any]) -> Tower:
    """The text tower alone on OpenVINO ``device`` at f32 on a CPU (converted or loaded from the
    export, compiled on first use on a CPU): ``build``'s text half, also used beside a torch image
    tower (``select.auto_text_backend``). It is the export's one text tower, so the OpenVINO
    backend and a torch run share one conversion. Arguments as for ``build``.

    Raises:
        OSError: ``folder`` is not a model folder; whatever the exporter or OpenVINO raise.
    """
    from .towers import example_tokens, text_names

    names = text_names(tokens)
    input_size = export.text_input_size(input_size, export.native_image_size(model))
    fields = {"tower": "text", "precision": "float", "input_size": input_size, "inputs": names}
    entry = saved_tower(model, folder, fields, example_tokens(tokens, names))
    return text_tower(Path(entry["dir"]), device, threads, names, entry, lazy=device == "CPU")


def image_tower(folder: Path, device: str, dtype: str, threads: int | None, input_size: int | None,
                manifest: dict, *, lazy: bool = False) -> Tower:
    """The image tower of a saved conversion (``model.xml`` in ``folder``), compiled for ``device``
    at the precision ``dtype`` asks for (``_image_hint``) and, below f32, checked on a test batch.
    ``lazy``: with an f32 hint, a ``LazyTower`` compiled on the first ``encode`` instead (its
    precision is known without compiling)."""
    hint = _image_hint(dtype, device)

    def make(compiled: Any) -> RuntimeTower:
        return RuntimeTower(runner(compiled, "image"), "openvino", "image", precision=inference_dtype(compiled),
                            target=device, manifest=manifest)

    path = folder / "model.xml"
    if lazy and hint == "f32":
        return LazyTower(lambda: make(compile_model(path, device, hint, threads)), "openvino", "image",
                         precision=DTYPE_NAMES[hint], manifest=manifest)
    return make(_checked_compile(path, device, hint, threads, input_size))


def text_tower(folder: Path, device: str, threads: int | None, names: list[str], manifest: dict, *,
               lazy: bool = False) -> Tower:
    """The text tower of a saved conversion (``model.xml`` in ``folder``), compiled at f32 on a CPU
    (labels are encoded once); ``lazy``: a ``LazyTower`` compiled on the first ``encode``."""
    def make() -> RuntimeTower:
        compiled = compile_model(folder / "model.xml", device, "f32" if device == "CPU" else None, threads)
        return RuntimeTower(runner(compiled, "text"), "openvino", "text", names=names, target=device,
                            manifest=manifest)

    return LazyTower(make, "openvino", "text", manifest=manifest) if lazy else make()


def _image_hint(dtype: str, device: str) -> str | None:
    """The image tower's precision hint: the one ``--dtype`` asks for; with ``auto`` OpenVINO's own
    default, except f32 on a CPU with AMX. There OpenVINO 2026.4's default bf16 was unusable on a
    2-core Sapphire Rapids-class VM (full-size Chinese-CLIP ViT-B/16, 92 photos): beside torch it
    returned NaN embeddings; in a process without torch it crashed (SIGSEGV) on the last, partial
    batch; and the NNCF int8 model ran at 13 images/s with bf16 against 37 with f32.
    ``--dtype bfloat16`` still asks for bf16."""
    from .devices import cpu_has_amx

    hint = PRECISION_HINTS.get(dtype)
    if hint is None and device == "CPU" and cpu_has_amx():
        return "f32"
    return hint


def _checked_compile(path: Path, device: str, hint: str | None, threads: int | None, input_size: int | None) -> Any:
    """``compile_model``, then one inference on a test batch: when a reduced precision gives
    non-finite embeddings, say so and compile again at f32 (a model that cannot give an answer
    is never served)."""
    compiled = compile_model(path, device, hint, threads)
    if hint == "f32":
        return compiled
    side = int(input_size or 224)
    test = np.random.default_rng(0).standard_normal((2, 3, side, side), dtype=np.float32)
    out = np.asarray(compiled({0: test})[compiled.output(0)], dtype=np.float32)
    if np.isfinite(out).all():
        return compiled
    log.warning("OpenVINO's %s inference gave non-finite embeddings on a test image on %s: running the image "
                "tower at float32 instead (--dtype float32 says so up front)", inference_dtype(compiled), device)
    return compile_model(path, device, "f32", threads)


def calibration_arrays(paths: Iterable[Path], prepare: Callable[[Any], Any],
                       input_size: int | None) -> list[np.ndarray]:
    """``pixel_values (1, 3, S, S)`` float32 arrays of up to ``CALIBRATION_IMAGES`` of ``paths``,
    decoded as a run decodes them (``input.load_image``) and prepared by the task; unreadable
    files are skipped."""
    from ..input import load_image

    out = []
    for path in paths:
        if len(out) >= CALIBRATION_IMAGES:
            break
        try:
            decoded = load_image(Path(path), draft_size=input_size)
            out.append(np.ascontiguousarray(as_numpy(prepare(decoded.image)), dtype=np.float32))
        except Exception as exc:  # one bad file must not stop the calibration
            log.debug("calibration skips %s: %s", path, exc)
    return out
