"""OpenVINO backend: a dual encoder's towers converted with ``openvino.convert_model``, saved in
the conversion cache (``cache.py``), compiled for an OpenVINO device.

Conversion: ``ov.convert_model`` traces the tower module (``towers.py``) on an example input
(OpenVINO's recommended path for PyTorch models, docs "Converting a PyTorch Model"); the result is
saved with ``ov.save_model(..., compress_to_fp16=False)`` so the float model holds the float32
weights. ``--quantize int8`` (image tower only) runs NNCF's post-training static quantization
(``nncf.quantize`` with ``ModelType.TRANSFORMER``, NNCF docs "Post-training Quantization") on up to
``CALIBRATION_IMAGES`` of the run's own images, and is cached like a conversion.

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
from ..hardware import HOST_CPU
from . import cache
from .base import Deferred, RuntimeTextEncoder, normalized, numpy_tokens

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

    estimate = cache.estimate_seconds("openvino", precision, tower_parameters(model, tower))
    about = f"about {estimate:.0f} s" if estimate is not None else "this takes a while for a full-size model"
    log.warning("%s the %s tower for OpenVINO (first run only, %s; saved in %s)", what, tower, about,
                cache.cache_root())


def saved_model(model: torch.nn.Module, tower: str, fields: dict[str, Any], example: Any,
                calibration: Callable[[], list[np.ndarray]] | None = None) -> tuple[Path, dict]:
    """The path of the tower's OpenVINO IR (``model.xml``) in the conversion cache, converting
    (and, with ``calibration``, quantizing to int8) first when no verified copy is there.

    Returns:
        ``(path to model.xml, manifest)``.

    Raises:
        whatever the exporter or NNCF raise (nothing is saved then).
    """
    folder = cache.entry_dir("openvino", fields)
    manifest = cache.load_entry(folder, fields)
    if manifest is None:
        precision = fields["precision"]
        _announce(model, tower, precision, "quantizing to int8" if calibration else "converting")

        def write(tmp: Path) -> dict:
            import openvino as ov
            import torch

            from .towers import ImageTower, TextTower, tower_parameters

            t0 = time.perf_counter()
            wrapper = ImageTower(model) if tower == "image" else TextTower(model)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's TracerWarnings: shapes stay dynamic
                ov_model = ov.convert_model(wrapper.eval(), example_input=example)
            CONVERSIONS[tower] += 1
            extra = {"parameters": tower_parameters(model, tower)}
            if calibration is not None:
                ov_model, extra["calibration"] = _quantize(ov_model, calibration)
            ov.save_model(ov_model, tmp / "model.xml", compress_to_fp16=False)
            log.warning("%s tower ready for OpenVINO in %.1f s", tower, time.perf_counter() - t0)
            return extra

        manifest = cache.build_entry(folder, fields, write)
    return folder / "model.xml", manifest


def _quantize(ov_model: Any, calibration: Callable[[], list[np.ndarray]]) -> tuple[Any, str]:
    """NNCF static int8 of ``ov_model`` on the arrays ``calibration()`` gives
    (``pixel_values (1, 3, S, S)`` each). Returns the model and which images calibrated it."""
    import nncf

    items = calibration()
    if not items:
        raise ValueError("no image could be read to calibrate int8")
    quantized = nncf.quantize(ov_model, nncf.Dataset(items), subset_size=len(items),
                              model_type=nncf.ModelType.TRANSFORMER)
    return quantized, f"{len(items)} images"


def compile_model(path: Path, device: str, hint: str | None, threads: int | None) -> Any:
    """``Core.compile_model`` of the IR at ``path`` on ``device`` with the precision ``hint``
    (``None``: OpenVINO's default), the latency performance hint, ``threads`` on the CPU, and
    OpenVINO's compiled-blob cache (``CACHE_DIR``)."""
    from .devices import openvino_core

    core = openvino_core()
    config: dict[str, Any] = {"CACHE_DIR": str(cache.compiled_dir()), "PERFORMANCE_HINT": "LATENCY"}
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


class OpenVINOImageEncoder:
    """An ``ImageEncoder`` on an OpenVINO compiled model: ``pixel_values (B, 3, H, W)`` float32 on
    the CPU → ``(B, D)`` float32, L2-normalised (in float32).

    Attributes:
        device / dtype: where inputs are given (``cpu``, ``float32``): OpenVINO does the rest.
        target: the OpenVINO device (``CPU``, ``GPU.0``, ``AUTO``...).
        precision: the dtype OpenVINO computes in (``bfloat16`` on a CPU with bf16...).
        manifest: the conversion cache manifest of the model in use.
    """

    backend = "openvino"

    def __init__(self, compiled: Any, target: str, manifest: dict, *,
                 factory: Callable[[], Any] | None = None, precision: str | None = None) -> None:
        """``compiled``: the compiled model; or ``None`` with ``factory`` (compiles it on the first
        ``encode``: a run whose images all come from the embedding store never compiles the
        tower) and the ``precision`` that compile gives (an explicit hint's)."""
        self.runtime, self.request = Deferred(compiled, factory), None
        self.target = target
        self.precision = precision or inference_dtype(compiled)
        self.manifest = manifest
        self.device = HOST_CPU
        self.dtype = "float32"

    @property
    def compiled(self) -> Any:
        """The compiled model (compiled now if it was deferred)."""
        return self.runtime.get()

    def encode(self, pixel_values: Any) -> np.ndarray:
        """``pixel_values (B, 3, H, W)`` float32 (NumPy, or a CPU torch tensor) → ``(B, D)``
        float32 NumPy embeddings of L2 norm 1."""
        if self.request is None:
            self.request = self.compiled.create_infer_request()
        x = np.ascontiguousarray(as_numpy(pixel_values), dtype=np.float32)
        out = self.request.infer({0: x})[self.compiled.output(0)]
        return normalized(out)


class OpenVINOTextEncoder(RuntimeTextEncoder):
    """A ``TextEncoder`` on an OpenVINO compiled model (token ids ``(L, T)`` → ``(L, D)`` float32,
    L2-normalised); built with the compiled model, or ``None`` and a ``factory`` that compiles it
    on the first ``encode`` (``base.RuntimeTextEncoder``)."""

    backend = "openvino"

    @property
    def compiled(self) -> Any:
        """The compiled model (compiled now if it was deferred)."""
        return self.runtime.get()

    def encode(self, tokens: Mapping[str, Any]) -> np.ndarray:
        """Tokenizer output (``input_ids (L, T)``...: NumPy or torch) → ``(L, D)`` float32 NumPy
        embeddings of L2 norm 1."""
        out = self.compiled(numpy_tokens(tokens, self.names))[self.compiled.output(0)]
        return normalized(out)


def build(model: torch.nn.Module, *, base_fields: dict[str, Any], device: str, dtype: str, int8: bool,
          threads: int | None, input_size: int | None, tokens: Mapping[str, Any],
          calibration: Callable[[], list[np.ndarray]] | None) -> tuple[OpenVINOImageEncoder, OpenVINOTextEncoder]:
    """Both towers on OpenVINO ``device`` (converted or loaded from the cache, compiled).

    Args:
        model: the loaded torch dual encoder (float32, CPU).
        base_fields: the model's identity (``cache.model_fingerprint`` and its name).
        device: an OpenVINO device string (already checked by ``devices.resolve_openvino_device``).
        dtype: ``auto`` or a ``--dtype`` name (the image tower's precision hint).
        int8: quantize the image tower with NNCF (``calibration`` gives its images).
        threads: CPU inference threads.
        input_size: the image side in pixels (part of the cache key; 224 when unknown).
        tokens: the label prompts' tokenizer output (the text tower's example input).
    """
    from .towers import example_image

    fields = {**base_fields, "backend": "openvino", "version": version(), "input_size": input_size}
    image_fields = {**fields, "tower": "image", "precision": "int8" if int8 else "float"}
    if int8:
        import nncf

        image_fields.update(nncf=nncf.__version__, calibration_max=CALIBRATION_IMAGES)
    path, manifest = saved_model(model, "image", image_fields, {"pixel_values": example_image(input_size)},
                                 calibration if int8 else None)
    image = compiled_image_encoder(path, device, dtype, threads, input_size, manifest)
    return image, build_text(model, base_fields=base_fields, device=device, threads=threads, input_size=input_size,
                             tokens=tokens)


def build_text(model: torch.nn.Module, *, base_fields: dict[str, Any], device: str, threads: int | None,
               input_size: int | None, tokens: Mapping[str, Any]) -> OpenVINOTextEncoder:
    """The text tower alone on OpenVINO ``device`` at f32 on a CPU (converted or loaded from the
    cache, compiled): ``build``'s text half, also used beside a torch image tower
    (``select.auto_text_backend``). Its cache entry is the one ``build`` makes, so the OpenVINO
    backend and a torch run share one conversion. Arguments as for ``build``.

    Raises:
        whatever the exporter or OpenVINO raise.
    """
    from .towers import example_tokens, text_names

    names = text_names(tokens)
    fields = {**base_fields, "backend": "openvino", "version": version(), "input_size": input_size, "tower": "text",
              "precision": "float", "inputs": names}
    text_path, text_manifest = saved_model(model, "text", fields, example_tokens(tokens, names))
    return compiled_text_encoder(text_path, device, threads, names, text_manifest, lazy=device == "CPU")


def compiled_image_encoder(path: Path, device: str, dtype: str, threads: int | None, input_size: int | None,
                           manifest: dict, *, lazy: bool = False) -> OpenVINOImageEncoder:
    """The image encoder of a saved conversion (``model.xml`` at ``path``), compiled for ``device``
    at the precision ``dtype`` asks for (``_image_hint``) and, below f32, checked on a test batch.
    ``lazy``: with an f32 hint, compiled on the first ``encode`` instead (its precision is known
    without compiling)."""
    hint = _image_hint(dtype, device)
    if lazy and hint == "f32":
        return OpenVINOImageEncoder(None, device, manifest, precision=DTYPE_NAMES[hint],
                                    factory=lambda: compile_model(path, device, hint, threads))
    return OpenVINOImageEncoder(_checked_compile(path, device, hint, threads, input_size), device, manifest)


def compiled_text_encoder(path: Path, device: str, threads: int | None, names: list[str],
                          manifest: dict, *, lazy: bool = False) -> OpenVINOTextEncoder:
    """The text encoder of a saved conversion, compiled at f32 on a CPU (labels are encoded once);
    ``lazy``: on the first ``encode``."""
    def compile_text() -> Any:
        return compile_model(path, device, "f32" if device == "CPU" else None, threads)

    return OpenVINOTextEncoder(None, names, manifest, factory=compile_text) if lazy else \
        OpenVINOTextEncoder(compile_text(), names, manifest)


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
