"""Model registry and loading: the only module that calls ``from_pretrained``.

Default models are data (``DEFAULT_MODELS``), in the manner of open_clip's ``pretrained.py``.
``load`` accepts a hub id or a local folder, reads the local cache first (no network call when
the model is already there), and turns every loading failure into one ``ModelLoadError`` line
that says what to do.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wwts.core.errors import ModelLoadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """A default model.

    Attributes:
        name: hub id.
        task: ``classify`` or ``caption``.
        lang: language of labels/captions it is meant for.
        note: why it is the default (shown by ``wwts doctor``).
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
        "Qwen/Qwen2-VL-2B-Instruct", "caption", "zh",
        "Qwen2-VL 2B instruct: small chat VLM that answers in Chinese",
    ),
}

OFFLINE_HINT = ("use a local copy with --model ./model-folder (one saved by save_pretrained or "
                "`huggingface-cli download`), or a hub mirror: export HF_ENDPOINT=https://hf-mirror.com")


def default_model(task: str, lang: str = "en") -> str:
    """Hub id of the default model for ``task`` (``caption`` with ``lang="zh"`` → Chinese default)."""
    key = "caption-zh" if task == "caption" and lang == "zh" else task
    return DEFAULT_MODELS[key].name


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
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"model folder {name} has no config.json: not a transformers model folder")
        return str(p.resolve()), True
    if p.exists() or looks_like_path:
        raise ModelLoadError(f"model folder {name} does not exist or is not a folder")
    return name, False


def _is_offline_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    keys = ("offline", "couldn't connect", "could not connect", "connection", "resolve",
            "timed out", "name or service", "max retries", "network", "localentrynotfound",
            "we couldn't", "cannot find the requested files", "not found in the cache", "local_files_only")
    return any(k in text for k in keys)


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder in use (honours ``HF_HUB_CACHE`` / ``HF_HOME``)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:
        return os.path.expanduser("~/.cache/huggingface/hub")


def _from_pretrained(cls: Any, source: str, is_local: bool, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` reading the cache first, then the hub; errors → ``ModelLoadError``."""
    if is_local:
        return cls.from_pretrained(source, **kwargs)
    try:
        return cls.from_pretrained(source, local_files_only=True, **kwargs)
    except Exception as cached_exc:
        if os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "TRUE", "yes", "ON", "on"):
            raise ModelLoadError(
                f"model {source!r} is not in the local cache ({hub_cache_dir()}) and HF_HUB_OFFLINE=1 "
                f"forbids downloading it: {OFFLINE_HINT}") from None
        log.debug("not in cache (%s); downloading from the hub", cached_exc)
    try:
        return cls.from_pretrained(source, **kwargs)
    except Exception as exc:
        if _is_offline_error(exc):
            endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
            raise ModelLoadError(
                f"model {source!r} is not in the local cache ({hub_cache_dir()}) and the model hub "
                f"({endpoint}) cannot be reached: {OFFLINE_HINT}") from None
        raise


def load_config(name: str, *, trust_remote_code: bool = False) -> Any:
    """Load a model's ``PretrainedConfig`` (to pick the model family before loading weights).

    Raises:
        ModelLoadError: as ``load``.
    """
    from transformers import AutoConfig

    source, is_local = parse_model_name(name)
    try:
        return _from_pretrained(AutoConfig, source, is_local, trust_remote_code=trust_remote_code)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot read the config of model {name!r}: {_first_line(exc)}") from None


def load(name: str, *, model_class: Any = None, processor_class: Any = None,
         trust_remote_code: bool = False, model_kwargs: dict | None = None,
         processor_kwargs: dict | None = None) -> tuple[Any, Any]:
    """Load ``(model, processor)`` from a hub id or a local folder, model in eval mode on the CPU.

    Args:
        name: hub id (``OFA-Sys/chinese-clip-vit-base-patch16``) or local folder.
        model_class: a transformers auto class (default ``AutoModel``).
        processor_class: default ``AutoProcessor``.
        trust_remote_code: allow the repository's own Python code (off by default).
        model_kwargs / processor_kwargs: extra ``from_pretrained`` arguments (``dtype``...).
            Safetensors weights are preferred (``use_safetensors`` is left to transformers, which
            picks safetensors when present).

    Returns:
        ``(model, processor)``.

    Raises:
        ModelLoadError: not cached and the hub is unreachable (the message says what to do), a
            folder that is not a model, or a model the class cannot load.
    """
    from transformers import AutoModel, AutoProcessor

    model_class = model_class or AutoModel
    processor_class = processor_class or AutoProcessor
    source, is_local = parse_model_name(name)
    try:
        processor = _from_pretrained(processor_class, source, is_local,
                                     trust_remote_code=trust_remote_code, **(processor_kwargs or {}))
        model = _from_pretrained(model_class, source, is_local,
                                 trust_remote_code=trust_remote_code, **(model_kwargs or {}))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot load model {name!r}: {_first_line(exc)}") from None
    model.eval()
    return model, processor


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
