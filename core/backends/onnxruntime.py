"""ONNX Runtime backend: a dual encoder's towers exported with ``torch.onnx.export`` (the
``torch.export``-based exporter, ``dynamo=True``, the one torch maintains since 2.5), saved in the
model's export (``export.py``), run by an ``InferenceSession`` on the proven execution providers.

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
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..errors import UsageError
from . import export
from .tower import LazyTower, RuntimeTower, Tower

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


def saved_tower(model: torch.nn.Module, folder: str, fields: dict[str, Any], example: dict[str, torch.Tensor],
                int8: bool = False) -> dict[str, Any]:
    """The tower ``fields["tower"]`` at ``fields["precision"]`` in the ONNX Runtime export of the
    weights in model ``folder``, exported (and quantized to dynamic int8) first when no verified
    copy made for ``fields`` is there. Returns its ``export.json`` entry, with ``dir`` (the folder
    holding ``model.onnx``).

    Raises:
        OSError: ``folder`` is not a model folder; whatever the exporter raises (nothing is saved).
    """
    tower, precision = fields["tower"], fields["precision"]
    where = export.export_dir(folder, "onnxruntime", version())
    name = export.entry_name(fields, export.native_image_size(model))
    entry = export.verified(where, name, fields)
    if entry is not None:
        return entry
    from .towers import ExportModule, tower_parameters

    params = tower_parameters(model, tower)
    estimate = export.estimate_seconds("onnxruntime", precision, params)
    about = f"about {estimate:.0f} s" if estimate is not None else "this takes a while for a full-size model"
    log.warning("converting the %s tower for ONNX Runtime%s (first run only, %s; saved in %s)", tower,
                " and quantizing it to int8" if int8 else "", about, export.cache_root())

    def write(tmp: Path) -> dict:
        t0 = time.perf_counter()
        float_path = tmp / ("float.onnx" if int8 else "model.onnx")
        _export(ExportModule(model, tower), example, float_path)
        CONVERSIONS[tower] += 1
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(float_path, tmp / "model.onnx", weight_type=QuantType.QInt8)
            float_path.unlink()
        log.warning("%s tower ready for ONNX Runtime in %.1f s", tower, time.perf_counter() - t0)
        return {"parameters": params}

    return export.build_tower(where, name, fields, write, weights_folder=folder,
                              version=version())


def session(path: Path, providers: tuple[tuple[str, dict], ...], threads: int | None) -> Any:
    """An ``InferenceSession`` for ``path`` on ``providers`` (in order), with all graph
    optimisations and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), sess_options=options, providers=[(p, dict(o)) for p, o in providers])


def onnx_tower(folder: Path, tower: str, providers: tuple[tuple[str, dict], ...], threads: int | None,
               manifest: dict, *, names: Sequence[str] = (), lazy: bool = False) -> Tower:
    """Tower ``tower`` (``image`` / ``text`` with token inputs ``names``) of a saved export
    (``model.onnx`` in ``folder``) on an ``InferenceSession``; ``lazy``: a ``LazyTower`` that opens
    the session on the first ``encode``. An image tower computes in float32 (int8 weights too with
    ``--quantize int8``)."""
    precision = "float32" if tower == "image" else None

    def make() -> RuntimeTower:
        sess = session(folder / "model.onnx", providers, threads)
        return RuntimeTower(lambda inputs: sess.run(None, inputs)[0], "onnxruntime", tower, names=names,
                            precision=precision, target=",".join(sess.get_providers()), manifest=manifest)

    return LazyTower(make, "onnxruntime", tower, precision=precision, manifest=manifest) if lazy else make()


def check_dtype(dtype: str) -> None:
    """ONNX Runtime runs float32 (or ``--quantize int8``).

    Raises:
        UsageError: ``dtype`` is ``bfloat16`` or ``float16``.
    """
    if dtype not in ("auto", "float32"):
        raise UsageError(f"--dtype {dtype}: the ONNX Runtime backend runs float32 (or --quantize int8); "
                         "use --backend openvino or torch for bfloat16 / float16")


def build(model: torch.nn.Module, *, folder: str, providers: tuple[tuple[str, dict], ...], dtype: str,
          int8: bool, threads: int | None, input_size: int | None, tokens: Mapping[str, Any]) -> tuple[Tower, Tower]:
    """Both towers on ONNX Runtime ``providers`` (exported or loaded from the export of the weights
    in model ``folder``). Other arguments as for ``openvino.build``.

    Raises:
        UsageError: ``dtype`` is ``bfloat16`` or ``float16``.
        OSError: ``folder`` is not a model folder; whatever the exporter or ONNX Runtime raise.
    """
    check_dtype(dtype)
    import onnxruntime  # noqa: F401 - fail here, before exporting, if it is missing
    import torch

    from .towers import example_image, example_tokens, text_names

    fields = {"opset": OPSET, "torch": torch.__version__, "input_size": input_size}
    image_fields = {**fields, "tower": "image", "precision": "int8" if int8 else "float"}
    entry = saved_tower(model, folder, image_fields, {"pixel_values": example_image(input_size)}, int8)
    image = onnx_tower(Path(entry["dir"]), "image", providers, threads, entry)
    names = text_names(tokens)
    text_fields = {**fields, "input_size": export.text_input_size(input_size, export.native_image_size(model))}
    text_entry = saved_tower(model, folder, {**text_fields, "tower": "text", "precision": "float", "inputs": names},
                             example_tokens(tokens, names))
    return image, onnx_tower(Path(text_entry["dir"]), "text", providers, threads, text_entry, names=names)
