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

from wwts.core.errors import ModelLoadError, describe

log = logging.getLogger(__name__)


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

LOCAL_COPY_HINT = ("use a local copy with --model ./model-folder (one saved by save_pretrained or "
                   "`hf download REPO --local-dir DIR`)")
OFFLINE_HINT = f"{LOCAL_COPY_HINT}, or a hub mirror: export HF_ENDPOINT=https://hf-mirror.com"


def hub_hint() -> str:
    """What to do when the hub cannot be used, for the endpoint in use.

    With ``HF_ENDPOINT`` already set the user is not told to set it: the hint names the endpoint
    in use and how to go back to huggingface.co. Without it, the mirror is suggested.
    """
    endpoint = os.environ.get("HF_ENDPOINT", "").strip()
    if not endpoint:
        return OFFLINE_HINT
    return (f"check the hub at HF_ENDPOINT={endpoint} (or `unset HF_ENDPOINT` to use huggingface.co), "
            f"or {LOCAL_COPY_HINT}")


def offline_message(repo_id: str, cache: str) -> str:
    """The one line for a hub id that is not cached while offline mode is on: which variable turned
    it on, how to turn it off, and where downloads would come from."""
    on = [k for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
          if os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE")]
    var = on[0] if on else "HF_HUB_OFFLINE"
    endpoint = os.environ.get("HF_ENDPOINT", "").strip()
    source = (f"downloads would then come from HF_ENDPOINT={endpoint}" if endpoint else
              "if huggingface.co is blocked, also export HF_ENDPOINT=https://hf-mirror.com")
    return (f"model {repo_id!r} is not in the local cache ({cache}) and offline mode is on "
            f"({var}={os.environ.get(var, '').strip() or '1'}), so it cannot be downloaded: turn offline mode off "
            f"with `unset {var}` (or {var}=0; {source}), or {LOCAL_COPY_HINT}")


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


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder in use (honours ``HF_HUB_CACHE`` / ``HF_HOME``)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:
        return os.path.expanduser("~/.cache/huggingface/hub")


#: Files a transformers model never needs from the hub (other frameworks' weights, exports).
_IGNORE_ALWAYS = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "*.tflite", "*.mlmodel", "*.gguf",
                  "onnx/*", "coreml/*", "openvino/*", "flax_model*", "tf_model*", "rust_model*"]


def cached_snapshot(repo_id: str) -> str | None:
    """Folder of ``repo_id``'s snapshot in the local hub cache, or ``None`` (no network)."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:
        return None


def download(repo_id: str) -> str:
    """Download ``repo_id`` into the hub cache (huggingface_hub's progress bars) and return its folder.

    The hub is first asked once, with a 3 s limit, whether it answers at all, so an unreachable hub
    costs seconds and one clear line instead of minutes of retries. Safetensors weights are
    preferred: when the repository has them, ``*.bin`` / ``*.pt`` files are not downloaded.

    Raises:
        ModelLoadError: offline mode, hub unreachable, no such repository, or a gated one.
    """
    cache = hub_cache_dir()
    from wwts.core.doctor import hub_offline, hub_status

    if hub_offline():
        raise ModelLoadError(offline_message(repo_id, cache))

    status = hub_status(timeout=3.0)
    if not status.get("reachable"):
        raise ModelLoadError(f"model {repo_id!r} is not in the local cache ({cache}) and the model hub "
                             f"({status.get('endpoint')}) cannot be reached ({status.get('detail')}): "
                             f"{hub_hint()}")
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        files = HfApi().list_repo_files(repo_id)
        ignore = list(_IGNORE_ALWAYS)
        if any(f.endswith(".safetensors") for f in files):
            ignore += ["*.bin", "*.pt", "*.pth"]
        log.warning("downloading %s from %s into %s", repo_id, status.get("endpoint"), cache)
        return snapshot_download(repo_id, ignore_patterns=ignore)
    except GatedRepoError:  # a subclass of RepositoryNotFoundError: first
        raise ModelLoadError(f"model {repo_id!r} is gated: accept its licence on the hub and log in "
                             "(`hf auth login`), or pass a local folder with --model") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"no model {repo_id!r} on the hub ({status.get('endpoint')}): check the "
                             "name, or pass a local folder with --model") from None
    except Exception as exc:
        raise ModelLoadError(f"downloading model {repo_id!r} failed ({describe(exc)}): {hub_hint()}") from None


def resolve(name: str) -> str:
    """A local folder holding model ``name``: the folder itself, the cached snapshot, or a download.

    Raises:
        ModelLoadError: see ``parse_model_name`` and ``download``.
    """
    source, is_local = parse_model_name(name)
    if is_local:
        return source
    return cached_snapshot(source) or download(source)


def load_config(name: str, *, trust_remote_code: bool = False) -> Any:
    """Load a model's ``PretrainedConfig`` (to pick the model family before loading weights).

    Raises:
        ModelLoadError: as ``load``.
    """
    from transformers import AutoConfig

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
