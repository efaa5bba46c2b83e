"""Closed-set classifiers that are not transformers models: a folder becomes a ``ClosedSetModel``.

Two layouts are read (``folder_kind``):

- ``modelscope``: ModelScope's general recognition model (``damo/cv_resnest101_general_recognition``,
  万物识别): ``pytorch_model.pt`` (a ResNeSt state dict, keys perhaps prefixed ``module.``), and
  ``meta_info.txt`` (one class a line, tab-separated, the name in the second column), as
  ``modelscope/pipelines/cv/general_recognition_pipeline.py`` reads them; its preprocessing is that
  pipeline's (``Resize(256)`` bilinear, ``CenterCrop(224)``, ImageNet mean / std: ``MODELSCOPE_TRANSFORM``).
- ``onnx`` / ``torchscript`` (seed-style): ``model.onnx`` or a TorchScript ``model.pt`` taking
  ``(B, 3, S, S)`` float32 and giving ``(B, C)`` logits, a labels file (``labels.txt``, one a line,
  or ``label_map.json``, index → name), and a ``preprocessor_config.json`` as transformers writes it.

Weights are read without running code from the file: ``torch.load(weights_only=True)`` for state
dicts, ``torch.jit.load`` for TorchScript; a pickled whole model (``torch.save(model)``) is refused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ModelLoadError, describe
from .transforms import ClassifierTransform

log = logging.getLogger(__name__)

MODELSCOPE_WEIGHTS, MODELSCOPE_LABELS = "pytorch_model.pt", "meta_info.txt"
LABEL_FILES = ("labels.txt", "label_map.json")
#: ModelScope general recognition pipeline's transforms (general_recognition_pipeline.py ``preprocess``).
MODELSCOPE_TRANSFORM = ClassifierTransform(("shortest_edge", 256), (224, 224))
_CONVERT_HINT = ("convert it once where you trust the file: torch.save(model.state_dict(), PATH), "
                 "torch.jit.save(torch.jit.script(model), 'model.pt') or torch.onnx.export(...) to 'model.onnx'")


@dataclass
class ClosedSetModel:
    """A closed-set classifier read from a folder.

    Attributes:
        name: what the user named (``--model``).
        folder: the folder read.
        kind: ``modelscope``, ``torchscript`` or ``onnx``.
        labels: the C class names in class order (as the files write them; duplicates kept).
        transform: one RGB image → ``pixel_values (1, 3, S, S)`` float32 (NumPy).
        module: the torch module (``(B, 3, S, S)`` → ``(B, C)`` logits, or an output with
            ``.logits``), ``None`` for ``onnx`` and until ``torch_module`` builds it (``build``).
        sigmoid: scores are a sigmoid per class (a multi-label model), not a softmax.
        draft_size: side in pixels the decoder may reduce photos to (the resize side).
        head: ``(weight (C, D), bias (C,))`` float32 of the linear classifier on the pooled
            ``(B, D)`` feature (the module's ``features``), when the model splits so (ResNeSt:
            D = 2048); read memory-mapped, the rest of the weights untouched. ``None``: logits only.
        build: makes ``module`` (reads the whole checkpoint), run by ``torch_module`` when needed.
    """

    name: str
    folder: str
    kind: str
    labels: list[str]
    transform: Callable[[Any], Any]
    module: Any = None
    sigmoid: bool = False
    draft_size: int | None = None
    head: tuple[Any, Any] | None = None
    build: Callable[[], Any] | None = None

    def torch_module(self) -> Any:
        """The torch module, built now on first use (``build``); ``None`` for an ``onnx`` folder.

        Raises:
            ModelLoadError: the checkpoint does not fit the architecture.
        """
        if self.module is None and self.build is not None:
            self.module = self.build()
        return self.module

    @property
    def onnx_path(self) -> Path:
        """``model.onnx`` of an ``onnx`` folder."""
        return Path(self.folder) / "model.onnx"


def folder_kind(folder: str | Path) -> str | None:
    """``modelscope``, ``onnx`` or ``torchscript`` when ``folder`` holds such a model, else ``None``."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if (folder / MODELSCOPE_WEIGHTS).is_file() and (folder / MODELSCOPE_LABELS).is_file():
        return "modelscope"
    if not any((folder / name).is_file() for name in LABEL_FILES):
        return None
    if (folder / "model.onnx").is_file():
        return "onnx"
    return "torchscript" if (folder / "model.pt").is_file() else None


def read_meta_info(path: Path) -> list[str]:
    """``meta_info.txt``'s class names: the second tab-separated column of each line (the whole
    line when it has no tab), a blank last line ignored.

    Raises:
        ModelLoadError: unreadable, or not UTF-8.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {describe(exc)}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    return [(line.split("\t")[1] if "\t" in line else line).strip() for line in lines]


def read_labels(folder: Path) -> list[str]:
    """A seed-style folder's labels: ``labels.txt`` (one a line), else ``label_map.json`` (an object
    of index → name, indices 0..C-1, or a list).

    Raises:
        ModelLoadError: unreadable, not JSON, or indices that are not 0..C-1.
    """
    path = folder / "labels.txt"
    try:
        if path.is_file():
            lines = path.read_text(encoding="utf-8-sig").splitlines()
            while lines and not lines[-1].strip():
                lines.pop()
            return [line.strip() for line in lines]
        path = folder / "label_map.json"
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {describe(exc)}") from None
    if isinstance(data, list):
        return [str(v) for v in data]
    try:
        ordered = sorted((int(k), str(v)) for k, v in dict(data).items())
    except (TypeError, ValueError):
        raise ModelLoadError(f"{path}: expected an object of class index → name") from None
    if [i for i, _ in ordered] != list(range(len(ordered))):
        raise ModelLoadError(f"{path}: the class indices are not 0..{len(ordered) - 1}")
    return [name for _, name in ordered]


def read_transform(folder: Path) -> ClassifierTransform:
    """The ``preprocessor_config.json`` of a seed-style folder as a ``ClassifierTransform``
    (transformers' conventions: an int ``size`` is the short side unless ``default_to_square``,
    ``resample`` a Pillow filter code, default bilinear).

    Raises:
        ModelLoadError: missing, not JSON, or a size it cannot read.
    """
    path = folder / "preprocessor_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        resize = _size(config.get("size"), bool(config.get("default_to_square", False))) \
            if config.get("do_resize", True) else None
        crop = _size(config.get("crop_size"), True) if config.get("do_center_crop", False) else None
        mean = tuple(config.get("image_mean") or (0.5,) * 3) if config.get("do_normalize", True) else None
        std = tuple(config.get("image_std") or (0.5,) * 3) if mean else None
        return ClassifierTransform(resize, crop[1] if crop else None, mean, std,
                                   int(config.get("resample", 2)), "transformers",
                                   float(config.get("rescale_factor", 1 / 255)))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"cannot read {path} (size, crop_size, image_mean, image_std, resample as "
                             f"transformers writes them): {describe(exc)}") from None


def _size(value: Any, square: bool) -> tuple:
    """transformers' ``size`` / ``crop_size`` → ``("shortest_edge", n)`` or ``("height_width", (h, w))``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return ("height_width", (value, value)) if square else ("shortest_edge", value)
    if isinstance(value, dict) and "shortest_edge" in value and len(value) == 1:
        return ("shortest_edge", int(value["shortest_edge"]))
    if isinstance(value, dict) and {"height", "width"} <= set(value):
        return ("height_width", (int(value["height"]), int(value["width"])))
    raise ValueError(f"size {value!r}: expected an int, {{'shortest_edge'}} or {{'height', 'width'}}")


def load_closed_set(name: str, folder: str | Path) -> ClosedSetModel:
    """The closed-set model in ``folder`` (``folder_kind`` says it is one); ``name`` is the user's.

    Raises:
        ModelLoadError: a file cannot be read; a pickled whole model; a checkpoint that is not the
            ResNeSt ModelScope's pipeline builds; a head whose class count differs from the labels'.
    """
    folder = Path(folder)
    kind = folder_kind(folder)
    if kind == "modelscope":
        labels = read_meta_info(folder / MODELSCOPE_LABELS)
        state = _resnest_state(folder / MODELSCOPE_WEIGHTS, len(labels), name)
        return ClosedSetModel(name, str(folder), kind, labels, MODELSCOPE_TRANSFORM,
                              draft_size=MODELSCOPE_TRANSFORM.draft_size,
                              head=(state["fc.weight"].float(), state["fc.bias"].float()),
                              build=lambda: _resnest_module(folder / MODELSCOPE_WEIGHTS, state))
    if kind is None:
        raise ModelLoadError(f"model folder {folder} holds no closed-set classifier ({MODELSCOPE_WEIGHTS} + "
                             f"{MODELSCOPE_LABELS}, or model.onnx / model.pt + labels.txt / label_map.json)")
    labels, transform = read_labels(folder), read_transform(folder)
    module = _torchscript_module(folder / "model.pt") if kind == "torchscript" else None
    return ClosedSetModel(name, str(folder), kind, labels, transform, module, draft_size=transform.draft_size)


def _state_dict(path: Path) -> dict[str, Any]:
    """``path``'s tensors, read with ``weights_only=True`` and memory-mapped (a tensor's bytes are
    read when used; a checkpoint in torch's legacy format, which cannot be mapped, is read whole);
    a ``state_dict`` entry unwrapped and a ``module.`` prefix (``DataParallel``) removed, as
    ModelScope's pipeline does.

    Raises:
        ModelLoadError: unreadable, or a pickled whole model (loading it would run code).
    """
    import pickle

    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelLoadError(f"{path} is a pickled whole model, not a state dict: loading it would run arbitrary "
                             f"code from the file, so wwts does not; {_CONVERT_HINT}") from None
    except Exception as exc:
        raise ModelLoadError(f"cannot read {path}: {describe(exc)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} holds a {type(state).__name__}, not a state dict; {_CONVERT_HINT}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _resnest_state(path: Path, classes: int, name: str) -> dict[str, Any]:
    """The checkpoint's tensors (memory-mapped, ``_state_dict``), checked to be ModelScope's ResNeSt
    with a head of ``classes`` classes (the labels') before any module is built.

    Raises:
        ModelLoadError: see ``_state_dict``; no ``fc.weight`` / ``fc.bias``; a head / labels mismatch.
    """
    state = _state_dict(path)
    head = state.get("fc.weight")
    if head is None or head.ndim != 2 or "fc.bias" not in state or "conv1.0.weight" not in state:
        raise ModelLoadError(f"{path} is not a ResNeSt state dict (no fc.weight / conv1.0.weight): "
                             "ModelScope's general recognition checkpoint was expected")
    if head.shape[0] != classes:
        raise ModelLoadError(f"model {name!r}: the checkpoint's head has {head.shape[0]} classes but "
                             f"{MODELSCOPE_LABELS} lists {classes}: the two files are not from one model")
    return state


def _resnest_module(path: Path, state: dict[str, Any]) -> Any:
    """ModelScope's ResNeSt with the checked ``state`` (``_resnest_state``), eval mode, float32 on
    the CPU. The block counts and stem width are read from the keys (ResNeSt-101: ``[3, 4, 23, 3]``,
    64), the class count from the head ``fc.weight``.

    Raises:
        ModelLoadError: keys or shapes that are not ResNeSt's.
    """
    from .resnest import ResNeSt

    layers = [1 + max((int(k.split(".")[1]) for k in state if k.startswith(f"layer{i}.")), default=-1)
              for i in range(1, 5)]
    model = ResNeSt(layers, state["fc.weight"].shape[0], stem_width=int(state["conv1.0.weight"].shape[0]))
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path} does not fit ModelScope's ResNeSt: {describe(exc).splitlines()[0]}") from None
    return model.eval()


def _torchscript_module(path: Path) -> Any:
    """A TorchScript ``model.pt`` (``torch.jit.load``: the archive's graph, no Python code run).

    Raises:
        ModelLoadError: a pickled whole model or a bare state dict (no architecture), or unreadable.
    """
    import torch

    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        problem = describe(exc)
    try:
        state = _state_dict(path)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{exc}" if "pickled whole model" in str(exc) else
                             f"{path} is not TorchScript ({problem})") from None
    raise ModelLoadError(f"{path} is a state dict ({len(state)} tensors) without its architecture: save the model "
                         "as TorchScript (torch.jit.save) or ONNX (model.onnx)")
