"""Model loading: the only module that calls ``from_pretrained``.

``load`` accepts a hub id or a local folder (``registry.parse_model_name``), reads the local hub
cache first (no network call when the model is already there, ``hub.cached_snapshot``), else
downloads it once (``hub.download``), and turns every loading failure into one
``ModelLoadError`` line that says what to do. ``quantize_int8`` is the optional int8 step.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..env import quiet_transformers
from ..errors import ModelLoadError, describe
from . import hub
from .modelscope import modelscope_id, modelscope_snapshot
from .registry import parse_model_name

log = logging.getLogger(__name__)


def resolve(name: str) -> str:
    """A local folder holding model ``name``: the folder itself, the cached snapshot, or a download.

    Raises:
        ModelLoadError: see ``registry.parse_model_name``, ``hub.download`` and
            ``modelscope.modelscope_snapshot``.
    """
    repo = modelscope_id(name)  # modelscope:ORG/NAME, or any hub id with WWTS_HUB=modelscope
    if repo is not None:
        return modelscope_snapshot(repo)
    source, is_local = parse_model_name(name)
    if is_local:
        return source
    return hub.cached_snapshot(source) or hub.download(source)


def load_config(name: str, *, trust_remote_code: bool = False) -> Any:
    """Load a model's ``PretrainedConfig`` (to pick the model family before loading weights).

    Raises:
        ModelLoadError: as ``load``.
    """
    from transformers import AutoConfig

    quiet_transformers()

    folder = resolve(name)
    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the config of model {name!r}: {describe(exc)}") from None


def weights_format(folder: str | Path) -> str | None:
    """Which weights a model folder holds: ``"safetensors"`` (any ``*.safetensors``, preferred when
    both are there), ``"pickle"`` (only ``pytorch_model*.bin``, transformers' pickle format), or ``None``
    (no weight files at the top level, e.g. remote code that fetches its own)."""
    names = [p.name for p in Path(folder).iterdir() if p.is_file()] if Path(folder).is_dir() else []
    if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
        return "safetensors"
    if any(n.startswith("pytorch_model") and n.endswith((".bin", ".bin.index.json")) for n in names):
        return "pickle"
    return None


def load(name: str, *, model_class: Any = None, processor_class: Any = None,
         trust_remote_code: bool = False, model_kwargs: dict | None = None,
         processor_kwargs: dict | None = None) -> tuple[Any, Any]:
    """Load ``(model, processor)`` from a hub id or a local folder, model in eval mode on the CPU.

    A hub id is read from the local hub cache when it is there (no network call at all), else
    downloaded once (``download``) into the normal cache.

    Args:
        name: hub id (``OFA-Sys/chinese-clip-vit-base-patch16``) or local folder.
        model_class: a transformers auto class (default ``AutoModel``).
        processor_class: default ``AutoProcessor``.
        trust_remote_code: allow the repository's own Python code (off by default).
        model_kwargs / processor_kwargs: extra ``from_pretrained`` arguments (``dtype``...).
            Weights: safetensors whenever the folder has them (``use_safetensors=True``); a folder
            with only pickle weights (``pytorch_model.bin``) loads them (torch reads them with
            ``weights_only=True``) after one warning (see ``weights_format``).

    Returns:
        ``(model, processor)``.

    Raises:
        ModelLoadError: not cached and the hub is unreachable (the message says what to do), a
            folder that is not a model, or a model the class cannot load.
    """
    from transformers import AutoModel, AutoProcessor

    quiet_transformers()

    model_class = model_class or AutoModel
    processor_class = processor_class or AutoProcessor
    folder = resolve(name)
    model_kwargs = dict(model_kwargs or {})
    weights = weights_format(folder)
    if weights == "safetensors":
        model_kwargs.setdefault("use_safetensors", True)
    elif weights == "pickle":
        log.warning("model %s has only pickle weights (pytorch_model.bin): torch loads them with "
                    "weights_only=True (tensors only, no code), but safetensors is the safer format (re-save the "
                    "model once with save_pretrained to get model.safetensors)", name)
    try:
        processor = processor_class.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                                    **(processor_kwargs or {}))
        model = model_class.from_pretrained(folder, trust_remote_code=trust_remote_code, **model_kwargs)
    except Exception as exc:
        raise ModelLoadError(f"cannot load model {name!r}: {describe(exc)}") from None
    model.eval()
    return model, processor


def quantize_int8(model: Any, modules: set[str] | None = None) -> Any:
    """Dynamic int8 quantization of ``nn.Linear`` layers (weights int8, activations quantized per
    batch at run time), in place; CPU only.

    Args:
        model: the model.
        modules: names of the submodules to quantize (with everything inside them), e.g.
            ``{"vision_model", "visual_projection"}``; ``None`` quantizes every Linear layer.

    Recipe: PyTorch's dynamic quantization (``torch.ao.quantization.quantize_dynamic``, "Dynamic
    Quantization" tutorial), which runs Linear layers on fbgemm's int8 kernels (AVX2 / AVX512-VNNI).
    Measured here (DESIGN.md): Chinese-CLIP ViT-B/16 image tower 22.6 images/s vs 16.4 with bf16
    autocast on 2 AVX-512 cores. Accuracy: the benchmark prints top-1 agreement with float32.

    Returns:
        The quantized model (the same object).
    """
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.10+ marks quantized tensors deprecated
        if modules is None:
            return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        for name in modules:
            sub = getattr(model, name)
            # Wrapped so that a bare Linear (a projection) is swapped too; only Linear layers
            # are quantized (embeddings and norms stay float32).
            wrapped = quantize_dynamic(torch.nn.Sequential(sub), {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
            setattr(model, name, wrapped[0])
        return model
