"""Default models as data, and the one resolver of "the model name when the user gave none".

Default models are data (``DEFAULT_MODELS``), in the manner of open_clip's ``pretrained.py``;
``model_for`` is the only place that turns ``(task, lang, --model)`` into a model name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError
from .closed_set import folder_kind


@dataclass(frozen=True)
class ModelSpec:
    """A default model.

    Attributes:
        name: hub id.
        task: ``classify`` or ``caption``.
        lang: language of labels/captions it is meant for.
        note: why it is the default, with its source (documentation for readers of this table).
    """

    name: str
    task: str
    lang: str
    note: str


DEFAULT_MODELS: dict[str, ModelSpec] = {
    "classify": ModelSpec(
        "OFA-Sys/chinese-clip-vit-base-patch16", "classify", "zh",
        "Chinese-CLIP ViT-B/16 (Yang et al. 2022, arXiv:2211.01335): Chinese text tower, 188M params",
    ),
    "caption": ModelSpec(
        "Salesforce/blip-image-captioning-base", "caption", "en",
        "BLIP base (Li et al. 2022, arXiv:2201.12086), COCO captioning, 247M params",
    ),
    "caption-zh": ModelSpec(
        "Qwen/Qwen3-VL-2B-Instruct", "caption", "zh",
        "Qwen3-VL 2B instruct (Qwen team 2025, Apache-2.0): the smallest Qwen-VL chat model, answers in "
        "Chinese; at wwts' 448x448 pixel budget about half the compute of Qwen2-VL-2B per image "
        "(0.4B vs 0.7B vision tower, 196 vs 256 visual tokens)",
    ),
}

#: Short names for models whose full name is long (``--model general-recognition``).
MODEL_ALIASES: dict[str, str] = {
    # ModelScope's 万物识别 (general recognition): ResNeSt-101 over 54,092 Chinese labels
    "general-recognition": "modelscope:damo/cv_resnest101_general_recognition",
    "万物识别": "modelscope:damo/cv_resnest101_general_recognition",
}


def default_model(task: str, lang: str = "en") -> str:
    """Hub id of the default model for ``task`` (``caption`` with ``lang="zh"`` → Chinese default).

    Raises:
        KeyError: ``task`` has no default model (not ``classify`` or ``caption``).
    """
    key = "caption-zh" if task == "caption" and lang == "zh" else task
    return DEFAULT_MODELS[key].name


def model_for(task: str, lang: str = "en", model: str | None = None) -> str:
    """The model a run uses: ``model`` (``--model``) when given, else the default for ``(task, lang)``.

    The one resolver of "the model name when the user gave none": call sites pass
    ``config.model`` here rather than writing ``config.model or default_model(...)`` out.

    Args:
        task: ``classify`` or ``caption``.
        lang: ``en`` or ``zh`` (only ``caption`` has a per-language default).
        model: hub id or local folder the user named, or ``None`` / ``""``.

    Returns:
        A hub id or a local folder name (not resolved or checked here); a short name of
        ``MODEL_ALIASES`` becomes the name it stands for.

    Raises:
        KeyError: no ``model`` and ``task`` has no default model.
    """
    return MODEL_ALIASES.get(model, model) if model else default_model(task, lang)


def parse_model_name(name: str) -> tuple[str, bool]:
    """Return ``(source, is_local)``: a local folder (resolved path) or a hub id ``owner/name``.

    Raises:
        ModelLoadError: ``name`` looks like a path (starts with ``.``, ``/``, ``~`` or exists)
            but is not a folder with a ``config.json``.
    """
    expanded = os.path.expanduser(name)
    p = Path(expanded)
    looks_like_path = name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or ":" in name
    if p.is_dir():
        if not (p / "config.json").is_file() and folder_kind(p) is None:
            raise ModelLoadError(f"model folder {name} has no config.json: not a transformers model folder "
                                 "(nor a closed-set classifier: pytorch_model.pt + meta_info.txt, or "
                                 "model.onnx / model.pt + labels.txt + preprocessor_config.json)")
        return str(p.resolve()), True
    if p.exists() or looks_like_path:
        raise ModelLoadError(f"model folder {name} does not exist or is not a folder")
    return name, False
