"""ModelScope (modelscope.cn) as a model source, through the ``modelscope`` library.

``--model modelscope:ORG/NAME`` takes a model from ModelScope; ``WWTS_HUB=modelscope`` makes every
hub id (``--model ORG/NAME`` and the default models) come from there. The model goes into
ModelScope's own cache (``MODELSCOPE_CACHE``, default ``~/.cache/modelscope``), laid out as
``modelscope.snapshot_download`` lays it (``models/ORG--NAME/snapshots/master/``; the older
``models/ORG/NAME`` layout with dots written ``___`` is read too), and is read from there first
with no network call. Repositories in transformers format (a ``config.json``) are taken, and
ModelScope's general recognition model (``pytorch_model.pt`` + ``meta_info.txt``, read by
``closed_set``); other ModelScope pipeline repositories (``configuration.json`` only) are refused
with one line.
Offline mode (``HF_HUB_OFFLINE=1``) is wwts' switch for both hubs: ModelScope is then not
contacted either.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError, describe
from .closed_set import MODELSCOPE_LABELS, MODELSCOPE_WEIGHTS, folder_kind
from .registry import parse_model_name

PREFIX = "modelscope:"
HUBS = ("huggingface", "modelscope")
INSTALL_HINT = "pip install 'wwts[modelscope]' (the modelscope package)"
DEFAULT_ENDPOINT = "https://modelscope.cn"


def hub_choice() -> str:
    """The default source of hub ids: ``WWTS_HUB`` (``huggingface``, the default, or ``modelscope``).

    Raises:
        ModelLoadError: any other value (exit code 2).
    """
    value = os.environ.get("WWTS_HUB", "").strip().lower() or "huggingface"
    if value in ("hf", "huggingface", "huggingface.co"):
        return "huggingface"
    if value == "modelscope":
        return value
    raise ModelLoadError(f"WWTS_HUB={os.environ['WWTS_HUB']!r}: valid values are huggingface and modelscope")


def modelscope_id(name: str) -> str | None:
    """The ModelScope repository ``name`` asks for, or ``None`` when it is not a ModelScope model:
    ``modelscope:ORG/NAME`` always is; a plain hub id is with ``WWTS_HUB=modelscope``; a local
    folder never is.

    Raises:
        ModelLoadError: ``modelscope:`` followed by something other than ``ORG/NAME``; a bad ``WWTS_HUB``.
    """
    if name.startswith(PREFIX):
        repo = name[len(PREFIX):].strip()
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise ModelLoadError(f"--model {name}: give a ModelScope repository as modelscope:ORG/NAME")
        return repo
    if hub_choice() != "modelscope":
        return None
    source, is_local = parse_model_name(name)
    return None if is_local else source


def modelscope_cache_dir() -> Path:
    """ModelScope's cache folder: ``MODELSCOPE_CACHE``, else ``~/.cache/modelscope`` (read at each call)."""
    return Path(os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope").expanduser()


def modelscope_endpoint() -> str:
    """ModelScope's endpoint: ``MODELSCOPE_ENDPOINT`` (as the library reads it), else modelscope.cn."""
    return (os.environ.get("MODELSCOPE_ENDPOINT", "").strip() or DEFAULT_ENDPOINT).rstrip("/")


def _library() -> Any:
    """``modelscope.hub.snapshot_download``.

    Raises:
        ModelLoadError: modelscope is not installed (the line says what to install).
    """
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:
        raise ModelLoadError(f"ModelScope models need the modelscope package: {INSTALL_HINT}") from None
    return snapshot_download


def _transformers_folder(folder: str, repo: str) -> str:
    """``folder`` when it holds a transformers model (``config.json``).

    Raises:
        ModelLoadError: it does not.
    """
    if not (Path(folder) / "config.json").is_file() and folder_kind(folder) != "modelscope":
        raise ModelLoadError(f"ModelScope model {repo!r} is not in transformers format (no config.json in {folder}): "
                             "wwts loads transformers models only, not ModelScope pipeline models")
    return folder


def modelscope_status(timeout: float = 2.0, *, check: bool = True) -> dict:
    """Whether ModelScope answers, within ``timeout`` (+0.5) seconds; skipped in offline mode and
    with ``check=False``.

    Returns:
        ``{"installed", "version", "endpoint", "cache_dir", "checked", "reachable": bool | None,
        "detail", "seconds"}``.
    """
    from importlib.metadata import PackageNotFoundError, version

    from .hub import _head, hub_offline

    try:
        installed = version("modelscope")
    except PackageNotFoundError:
        installed = None
    out = {"installed": installed is not None, "version": installed, "endpoint": modelscope_endpoint(),
           "cache_dir": str(modelscope_cache_dir()), "checked": False, "reachable": None, "seconds": 0.0,
           "detail": "offline mode (HF_HUB_OFFLINE): not contacted"}
    if hub_offline():
        return out
    if not check:
        return {**out, "detail": "not checked"}
    result: dict[str, Any] = {}
    start = time.monotonic()
    thread = threading.Thread(target=lambda: result.update(zip(("reachable", "detail"), _head(out["endpoint"], timeout))),
                              name="wwts-modelscope-check", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    out.update(checked=True, seconds=round(time.monotonic() - start, 2), reachable=result.get("reachable", False),
               detail=result.get("detail", f"no answer within {timeout:g} s"))
    return out


def modelscope_snapshot(repo: str) -> str:
    """A local folder holding ModelScope model ``repo``: from ModelScope's cache (no network), else
    downloaded into it (safetensors preferred: ``*.bin`` files are skipped when the repository has
    ``*.safetensors``).

    Raises:
        ModelLoadError: modelscope not installed, not cached while offline, ModelScope unreachable,
            no such repository, or a repository not in transformers format.
    """
    snapshot_download = _library()
    cache = str(modelscope_cache_dir())
    try:
        return _transformers_folder(snapshot_download(repo, cache_dir=cache, local_files_only=True), repo)
    except ModelLoadError:
        raise
    except Exception:  # not cached
        pass
    from .hub import hub_offline

    if hub_offline():
        raise ModelLoadError(f"ModelScope model {repo!r} is not in ModelScope's cache ({cache}) and offline mode is on "
                             "(HF_HUB_OFFLINE): `unset HF_HUB_OFFLINE` to download it, or pass a local folder with --model")
    status = modelscope_status(timeout=3.0)
    if not status["reachable"]:
        raise ModelLoadError(f"ModelScope model {repo!r} is not in ModelScope's cache ({cache}) and ModelScope "
                             f"({status['endpoint']}) cannot be reached ({status['detail']}): check the network or "
                             "MODELSCOPE_ENDPOINT, or pass a local folder with --model")
    return _download(snapshot_download, repo, cache)


def _download(snapshot_download: Any, repo: str, cache: str) -> str:
    """Check the file list for ``config.json``, then download (see ``modelscope_snapshot``)."""
    from modelscope.hub.api import HubApi

    try:
        files = [getattr(f, "path", None) or (f.get("Path") if isinstance(f, dict) else str(f))
                 for f in HubApi().get_model_files(repo, recursive=True)]
    except Exception as exc:
        raise ModelLoadError(f"no ModelScope model {repo!r}, or it cannot be listed ({describe(exc)})") from None
    if "config.json" not in files and not {MODELSCOPE_WEIGHTS, MODELSCOPE_LABELS} <= set(files):
        raise ModelLoadError(f"ModelScope model {repo!r} is not in transformers format (no config.json): wwts "
                             "loads transformers models only, not ModelScope pipeline models")
    ignore = ["*.h5", "*.msgpack", "*.onnx", "*.tflite", "*.gguf", "onnx/*", "flax_model*", "tf_model*"]
    if any(str(f).endswith(".safetensors") for f in files) and MODELSCOPE_WEIGHTS not in files:
        ignore += ["*.bin", "*.pt", "*.pth"]
    import logging

    logging.getLogger(__name__).warning("downloading %s from ModelScope into %s", repo, cache)
    try:
        return _transformers_folder(snapshot_download(repo, cache_dir=cache, ignore_patterns=ignore), repo)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"downloading ModelScope model {repo!r} failed ({describe(exc)})") from None
