"""ONNX Runtime backend: a dual encoder's towers exported with ``torch.onnx.export`` (the
``torch.export``-based exporter, ``dynamo=True``, the one torch maintains since 2.5), saved in the
conversion cache, run by an ``InferenceSession`` on the proven execution providers.

Both axes of every input are dynamic (batch; text length), so one export serves every batch size
and label set. ``--quantize int8`` (image tower only) applies ONNX Runtime's dynamic quantization
(``onnxruntime.quantization.quantize_dynamic``, int8 weights, activations quantized per batch at
run time; ONNX Runtime docs "Quantize ONNX models": dynamic quantization is the recommended
method for transformer models on the CPU), cached like the float export. Precision is float32
otherwise (``--dtype bfloat16`` / ``float16`` are refused: ONNX Runtime's CPU provider computes
float32).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from ..errors import UsageError
from . import cache
from ..arrays import as_numpy
from ..hardware import HOST_CPU
from .base import Deferred, RuntimeTextEncoder, normalized, numpy_tokens

if TYPE_CHECKING:  # torch is needed to export, never to run a saved conversion
    import torch

log = logging.getLogger(__name__)

#: Counts of exports made in this process, by tower (read by tests and the bench).
CONVERSIONS: dict[str, int] = {"image": 0, "text": 0}
#: Opset of the exported graphs (torch 2.13's exporter default, run by ONNX Runtime >= 1.20).
OPSET = 18


def version() -> str:
    """ONNX Runtime's version."""
    import onnxruntime as ort

    return ort.__version__


def _export(module: torch.nn.Module, example: dict[str, torch.Tensor], path: Path) -> None:
    """``torch.onnx.export`` of ``module`` on keyword inputs ``example``, every axis dynamic,
    weights inside ``path`` (the exporter's progress lines and warnings are kept off the console)."""
    import torch

    dims = {name: {i: torch.export.Dim.AUTO for i in range(t.dim() if name != "pixel_values" else 1)}
            for name, t in example.items()}
    quiet = io.StringIO()
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..." lines
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module.eval(), (), kwargs=example, input_names=list(example),
                                        output_names=["embeds"], dynamic_shapes=dims, opset_version=OPSET,
                                        dynamo=True, external_data=False, verbose=False)
            program.save(str(path))
    finally:
        onnx_log.setLevel(level)


def saved_model(model: torch.nn.Module, tower: str, fields: dict[str, Any], example: dict[str, torch.Tensor],
                int8: bool = False) -> tuple[Path, dict]:
    """The path of the tower's ONNX file in the conversion cache, exporting (and quantizing to
    dynamic int8) first when no verified copy is there. Returns ``(path, manifest)``."""
    folder = cache.entry_dir("onnxruntime", fields)
    manifest = cache.load_entry(folder, fields)
    if manifest is None:
        from .towers import ImageTower, TextTower, tower_parameters

        params = tower_parameters(model, tower)
        estimate = cache.estimate_seconds("onnxruntime", fields["precision"], params)
        about = f"about {estimate:.0f} s" if estimate is not None else "this takes a while for a full-size model"
        log.warning("converting the %s tower for ONNX Runtime%s (first run only, %s; saved in %s)", tower,
                    " and quantizing it to int8" if int8 else "", about, cache.cache_root())

        def write(tmp: Path) -> dict:
            t0 = time.perf_counter()
            wrapper = ImageTower(model) if tower == "image" else TextTower(model)
            float_path = tmp / ("float.onnx" if int8 else "model.onnx")
            _export(wrapper, example, float_path)
            CONVERSIONS[tower] += 1
            if int8:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantize_dynamic(float_path, tmp / "model.onnx", weight_type=QuantType.QInt8)
                float_path.unlink()
            log.warning("%s tower ready for ONNX Runtime in %.1f s", tower, time.perf_counter() - t0)
            return {"parameters": params}

        manifest = cache.build_entry(folder, fields, write)
    return folder / "model.onnx", manifest


def session(path: Path, providers: tuple[tuple[str, dict], ...], threads: int | None) -> Any:
    """An ``InferenceSession`` for ``path`` on ``providers`` (in order), with all graph
    optimisations and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), sess_options=options, providers=[(p, dict(o)) for p, o in providers])


class OnnxImageEncoder:
    """An ``ImageEncoder`` on an ONNX Runtime session: ``pixel_values (B, 3, H, W)`` float32 →
    ``(B, D)`` float32, L2-normalised.

    Attributes:
        device / dtype: where inputs are given (``cpu``, ``float32``).
        target: the providers in use (``CUDAExecutionProvider,CPUExecutionProvider``).
        precision: ``float32`` (int8 weights too with ``--quantize int8``).
        manifest: the conversion cache manifest of the model in use.
    """

    backend = "onnxruntime"

    def __init__(self, sess: Any, manifest: dict, int8: bool, *, factory: Callable[[], Any] | None = None) -> None:
        """``sess``, or ``None`` with a ``factory`` that opens it on the first ``encode`` (a run whose
        images all come from the embedding store never opens it)."""
        self.runtime = Deferred(sess, factory)
        self.precision = "float32"
        self.int8 = int8
        self.manifest = manifest
        self.device = HOST_CPU
        self.dtype = "float32"

    @property
    def session(self) -> Any:
        """The ``InferenceSession`` (opened now if it was deferred)."""
        return self.runtime.get()

    @property
    def target(self) -> str:
        """The providers in use (``"deferred"`` until the session is opened)."""
        return ",".join(self.session.get_providers()) if self.runtime.ready else "deferred"

    def encode(self, pixel_values: Any) -> np.ndarray:
        """``pixel_values (B, 3, H, W)`` float32 (NumPy, or a CPU torch tensor) → ``(B, D)``
        float32 NumPy embeddings of L2 norm 1."""
        x = np.ascontiguousarray(as_numpy(pixel_values), dtype=np.float32)
        out = self.session.run(None, {"pixel_values": x})[0]
        return normalized(out)


class OnnxTextEncoder(RuntimeTextEncoder):
    """A ``TextEncoder`` on an ONNX Runtime session (token ids ``(L, T)`` → ``(L, D)`` float32,
    L2-normalised); built with the session, or ``None`` and a ``factory`` that opens it on the
    first ``encode`` (``base.RuntimeTextEncoder``)."""

    backend = "onnxruntime"

    @property
    def session(self) -> Any:
        """The ``InferenceSession`` (opened now if it was deferred)."""
        return self.runtime.get()

    def encode(self, tokens: Mapping[str, Any]) -> np.ndarray:
        """Tokenizer output (NumPy or torch) → ``(L, D)`` float32 NumPy embeddings of L2 norm 1."""
        out = self.session.run(None, numpy_tokens(tokens, self.names))[0]
        return normalized(out)


def check_dtype(dtype: str) -> None:
    """ONNX Runtime runs float32 (or ``--quantize int8``).

    Raises:
        UsageError: ``dtype`` is ``bfloat16`` or ``float16``.
    """
    if dtype not in ("auto", "float32"):
        raise UsageError(f"--dtype {dtype}: the ONNX Runtime backend runs float32 (or --quantize int8); "
                         "use --backend openvino or torch for bfloat16 / float16")


def build(model: torch.nn.Module, *, base_fields: dict[str, Any], providers: tuple[tuple[str, dict], ...],
          dtype: str, int8: bool, threads: int | None, input_size: int | None,
          tokens: Mapping[str, Any]) -> tuple[OnnxImageEncoder, OnnxTextEncoder]:
    """Both towers on ONNX Runtime ``providers`` (exported or loaded from the cache).

    Raises:
        UsageError: ``dtype`` is ``bfloat16`` or ``float16``.
    """
    check_dtype(dtype)
    import onnxruntime  # noqa: F401 - fail here, before exporting, if it is missing
    import torch

    from .towers import example_image, example_tokens, text_names

    fields = {**base_fields, "backend": "onnxruntime", "version": version(), "opset": OPSET,
              "torch": torch.__version__, "input_size": input_size}
    image_fields = {**fields, "tower": "image", "precision": "int8" if int8 else "float"}
    path, manifest = saved_model(model, "image", image_fields, {"pixel_values": example_image(input_size)}, int8)
    image = OnnxImageEncoder(session(path, providers, threads), manifest, int8)
    names = text_names(tokens)
    example = example_tokens(tokens, names)
    text_path, text_manifest = saved_model(model, "text", {**fields, "tower": "text", "precision": "float",
                                                           "inputs": names}, example)
    return image, OnnxTextEncoder(session(text_path, providers, threads), names, text_manifest)
