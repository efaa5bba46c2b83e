"""Where a closed-set classifier's logits are computed: its torch module, OpenVINO or ONNX Runtime.

The run's backend (``backends.BackendChoice``, chosen by the plan as for any classify run) decides:

- an ONNX folder (``model.onnx``) runs on OpenVINO when the backend is ``openvino`` (OpenVINO reads
  ONNX directly), else on ONNX Runtime (it has no torch module);
- a transformers ``...ForImageClassification`` checkpoint runs on torch, whatever the backend;
- a torch module (ModelScope's ResNeSt, a TorchScript ``model.pt``) runs on torch for ``torch``,
  else is converted once (OpenVINO IR, ``openvino.convert_model``; ONNX, ``torch.onnx.export``)
  into ``backends.cache_root()/closed-set/``, keyed by the weights file's path, size and
  modification time and the runtime's version, and read from there on later runs;
- ``--quantize int8``: on OpenVINO, NNCF's static int8 (``backends.openvino.quantize_static``, its
  CNN recipe) calibrated on up to 300 of the run's photos, cached beside the OpenVINO conversion;
  on ONNX Runtime, its dynamic int8 (``quantize_dynamic``, weights int8 per channel), cached beside
  the float32 model. Measured on the real EfficientNet-Lite0 against torch float32 (19 photos:
  sample_images + 10 exif-samples, scripts/bench_recogniser.py's agreement): OpenVINO int8 top-1
  14/19, max |dp| 0.19; ONNX Runtime dynamic int8 10/19, 0.48 (static QDQ ``quantize_static`` was
  worse still). ``--backend auto --quantize int8`` picks OpenVINO when installed
  (``backends.select``).

OpenVINO computes in float32 (``INFERENCE_PRECISION_HINT=f32``) so that every backend answers
like torch float32. A model with a linear head on a pooled feature (ModelScope's ResNeSt) runs up
to the feature on the backend (``(B, 3, S, S)`` → ``(B, D)``) and the head in torch, so the
feature can be stored (``image_classification``); others give ``(B, C)`` logits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import backends, models

log = logging.getLogger(__name__)

Logits = Callable[[np.ndarray], np.ndarray]


class ClosedSetTower:
    """What computes a closed-set model's image output: ``encode(pixel_values (B, 3, S, S))`` →
    ``(B, D)`` float32 NumPy pooled features when the model splits into tower + linear head
    (``ClosedSetModel.head``: the head then runs in ``ImageClassificationTask``), else ``(B, C)`` logits.

    Attributes:
        features: ``encode`` gives features (the head is applied after), not logits.
        where: what runs it, for the run section and store keys (``torch``, ``openvino float32``...).
        backend: the runtime's name (``torch``, ``openvino``, ``onnxruntime``).
        store_name: the tower's name in embedding-store keys (``where``).
    """

    def __init__(self, run: Callable[[Any], Any], features: bool, where: str) -> None:
        self._run, self.features, self.where = run, features, where
        self.backend = where.split()[0]
        self.store_name = where

    def encode(self, pixel_values: Any) -> np.ndarray:
        """``(B, 3, S, S)`` (torch tensor or NumPy) → ``(B, D)`` or ``(B, C)`` float32 NumPy."""
        if self.backend != "torch" and hasattr(pixel_values, "detach"):
            pixel_values = np.ascontiguousarray(pixel_values.detach().float().cpu().numpy())
        out = self._run(pixel_values)
        out = getattr(out, "logits", out)
        if hasattr(out, "detach"):
            out = out.detach().float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)


def image_tower(classifier: models.ClosedSetModel, choice: Any) -> ClosedSetTower:
    """The tower of ``classifier`` on the run's backend ``choice`` (see the module docstring); the
    torch module is built (``ClosedSetModel.torch_module``) only to run on torch or to convert."""
    name = getattr(choice, "name", "torch")
    int8 = bool(getattr(choice, "int8", False)) and name in ("onnxruntime", "openvino")
    threads = getattr(choice, "threads", None)
    split = classifier.head is not None
    if classifier.kind == "transformers" or (classifier.kind != "onnx" and name == "torch"):
        module = classifier.torch_module()  # a transformers checkpoint runs on torch, whatever the backend
        return ClosedSetTower(module.features if split else module, split, "torch")
    if name == "openvino":
        path = classifier.onnx_path if classifier.kind == "onnx" else _converted(classifier, "openvino")
        if int8:
            path = _openvino_int8(path, classifier, getattr(choice, "calibration_paths", ()))
        return ClosedSetTower(_openvino(path, threads), split, f"openvino {'int8' if int8 else 'float32'}")
    path = classifier.onnx_path if classifier.kind == "onnx" else _converted(classifier, "onnxruntime")
    if int8:
        path = _quantized(path, classifier)
    return ClosedSetTower(_onnxruntime(path, threads), split, f"onnxruntime {'int8' if int8 else 'float32'}")


def _features_module(module: Any) -> Any:
    """``module.features`` (``(B, 3, S, S)`` → ``(B, D)``) as a module of its own, to convert."""
    import torch

    class Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, x: Any) -> Any:
            return self.inner.features(x)

    return Features().eval()


def _weights_file(classifier: models.ClosedSetModel) -> Path:
    folder = Path(classifier.folder)
    return folder / ("pytorch_model.pt" if classifier.kind == "modelscope" else
                     "model.onnx" if classifier.kind == "onnx" else "model.pt")


def _cache_dir(classifier: models.ClosedSetModel, runtime: str) -> Path:
    """``cache_root()/closed-set/<key>-<runtime>-<version>``: the key hashes the weights file's
    resolved path, size and modification time (a changed file is converted again)."""
    weights = _weights_file(classifier).resolve()
    stat = weights.stat()
    output = "features" if classifier.head is not None else "logits"
    key = hashlib.blake2b(f"{weights}|{stat.st_size}|{stat.st_mtime_ns}|{output}".encode(),
                          digest_size=10).hexdigest()
    version = _version(runtime)
    return backends.cache_root() / "closed-set" / f"{key}-{runtime}-{version}"


def _version(runtime: str) -> str:
    if runtime == "openvino":
        import openvino as ov

        return ov.get_version().split("-")[0]
    import onnxruntime as ort

    return ort.__version__


def _converted(classifier: models.ClosedSetModel, runtime: str) -> Path:
    """The torch module converted for ``runtime`` (``model.xml`` or ``model.onnx``), from the
    cache or converted now (written to a temporary folder, then renamed into place). A model that
    splits (``ClosedSetModel.head``) is converted up to its pooled feature; the torch module is
    built only here, when the cache lacks the conversion."""
    where = _cache_dir(classifier, runtime)
    target = where / ("model.xml" if runtime == "openvino" else "model.onnx")
    if target.is_file():
        return target
    import torch

    size = classifier.transform.input_size
    example = torch.zeros(1, 3, size, size)
    tmp = where.with_name(f"{where.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start = time.perf_counter()
    module = classifier.torch_module().float().eval()
    if classifier.head is not None:
        module = _features_module(module)
    if runtime == "openvino":
        import openvino as ov

        with torch.no_grad():
            converted = ov.convert_model(module, example_input=example)
        converted.reshape([-1, 3, size, size])
        ov.save_model(converted, str(tmp / "model.xml"), compress_to_fp16=False)
    else:
        _export_onnx(module, example, tmp / "model.onnx")
    shutil.rmtree(where, ignore_errors=True)
    os.replace(tmp, where)
    log.warning("model %s converted for %s in %.1f s (cached in %s)", classifier.name, runtime,
                time.perf_counter() - start, where)
    return target


def _export_onnx(module: Any, example: Any, path: Path) -> None:
    """``torch.onnx.export`` (dynamo) with a dynamic batch axis, weights inside the file."""
    import contextlib
    import io
    import warnings

    import torch

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), input_names=["pixel_values"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim.AUTO},), dynamo=True,
                                    external_data=False, verbose=False)
        program.save(str(path))


def _quantized(path: Path, classifier: models.ClosedSetModel) -> Path:
    """ONNX Runtime dynamic int8 of ``path`` (cached beside it, or under the cache for a user's
    ``model.onnx``, which wwts never writes beside)."""
    where = _cache_dir(classifier, "onnxruntime") if classifier.kind == "onnx" else path.parent
    target = where / "model-int8.onnx"
    if target.is_file():
        return target
    from onnxruntime.quantization import QuantType, quantize_dynamic

    where.mkdir(parents=True, exist_ok=True)
    tmp = where / f"model-int8.onnx.tmp{os.getpid()}"
    quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
    os.replace(tmp, target)
    return target


def _openvino_int8(path: Path, classifier: models.ClosedSetModel, paths: Any) -> Path:
    """NNCF static int8 (``backends.openvino.quantize_static``, its CNN recipe) of the OpenVINO /
    ONNX model ``path``, calibrated on up to ``CALIBRATION_IMAGES`` of the run's photos ``paths``
    (decoded and transformed as the run does), cached under the model's OpenVINO conversion folder
    (keyed by NNCF's version): later runs reuse it, whatever their photos.

    Raises:
        UsageError: no photos to calibrate on.
    """
    import nncf
    import openvino as ov

    from ..errors import UsageError

    where = _cache_dir(classifier, "openvino")
    target = where / f"model-int8-nncf{nncf.__version__}.xml"
    if target.is_file():
        return target
    if not paths:
        raise UsageError("--quantize int8 with OpenVINO needs images to calibrate on")
    start = time.perf_counter()

    def calibration() -> list[np.ndarray]:
        return backends.calibration_arrays(paths, classifier.transform, classifier.draft_size)

    quantized, used = backends.quantize_static(ov.Core().read_model(str(path)), calibration, transformer=False)
    where.mkdir(parents=True, exist_ok=True)
    tmp = where / f"int8.tmp{os.getpid()}"
    ov.save_model(quantized, str(tmp / "model.xml"), compress_to_fp16=False)
    for suffix in (".bin", ".xml"):  # the .xml names its .bin: rename both, .xml last
        os.replace(tmp / f"model{suffix}", target.with_suffix(suffix))
    shutil.rmtree(tmp, ignore_errors=True)
    log.warning("model %s quantized to int8 for OpenVINO in %.1f s (NNCF, calibrated on %s; cached in %s)",
                classifier.name, time.perf_counter() - start, used, where)
    return target


def _openvino(path: Path, threads: int | None) -> Logits:
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    return lambda pixels: np.asarray(compiled(pixels)[0])


def _onnxruntime(path: Path, threads: int | None) -> Logits:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda pixels: session.run(None, {name: pixels})[0]
