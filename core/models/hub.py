"""The Hugging Face hub: cache folder, cached snapshots, downloads, offline mode, mirrors.

No network call happens for a model that is already cached. A download first asks the hub,
with a short limit, whether it answers at all (``hub_status``), so an unreachable hub costs
seconds and one line that says what to do (``hub_hint``, ``offline_message``).
Also the hub and cache facts that ``wwts doctor`` reports (``cache_facts``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from ..errors import ModelLoadError, describe
from .registry import DEFAULT_MODELS

log = logging.getLogger(__name__)

#: Seconds the hub reachability check may take (it runs in a daemon thread, so a slow DNS
#: lookup cannot hold ``wwts doctor`` longer than this plus half a second).
HUB_TIMEOUT_S = 2.0

LOCAL_COPY_HINT = ("use a local copy with --model ./model-folder (one saved by save_pretrained or "
                   "`hf download REPO --local-dir DIR`)")
OFFLINE_HINT = f"{LOCAL_COPY_HINT}, or a hub mirror: export HF_ENDPOINT=https://hf-mirror.com"

#: Files a transformers model never needs from the hub (other frameworks' weights, exports).
_IGNORE_ALWAYS = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "*.tflite", "*.mlmodel", "*.gguf",
                  "onnx/*", "coreml/*", "openvino/*", "flax_model*", "tf_model*", "rust_model*"]
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _env_true(name: str) -> bool:
    """``name`` is set to a true value as huggingface_hub reads it (1/on/yes/true)."""
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    return os.environ.get(name, "").strip().upper() in ENV_VARS_TRUE_VALUES


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value (1/on/yes/true).

    Read from the environment at each call, not from ``huggingface_hub.constants.HF_HUB_OFFLINE``
    (or ``is_offline_mode()``, which returns it): that constant is read once when huggingface_hub
    is imported, so a variable set afterwards (by a test, or by a caller before a run) would be missed.
    """
    return any(_env_true(k) for k in _OFFLINE_VARS)


def hub_endpoint() -> str:
    """The model hub in use: ``HF_ENDPOINT`` (a mirror such as https://hf-mirror.com) or huggingface.co.

    Read at call time for the same reason as ``hub_offline`` (``constants.ENDPOINT`` is fixed at import).
    """
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or "https://huggingface.co"


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
    on = [k for k in _OFFLINE_VARS if _env_true(k)]
    var = on[0] if on else "HF_HUB_OFFLINE"
    endpoint = os.environ.get("HF_ENDPOINT", "").strip()
    source = (f"downloads would then come from HF_ENDPOINT={endpoint}" if endpoint else
              "if huggingface.co is blocked, also export HF_ENDPOINT=https://hf-mirror.com")
    return (f"model {repo_id!r} is not in the local cache ({cache}) and offline mode is on "
            f"({var}={os.environ.get(var, '').strip() or '1'}), so it cannot be downloaded: turn offline mode off "
            f"with `unset {var}` (or {var}=0; {source}), or {LOCAL_COPY_HINT}")


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder in use: ``huggingface_hub.constants.HF_HUB_CACHE``
    (``HF_HUB_CACHE`` / ``HF_HOME`` as they were when huggingface_hub was imported, the folder
    ``snapshot_download`` uses by default)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # huggingface_hub broken: its documented default
        return os.path.expanduser("~/.cache/huggingface/hub")


def _head(url: str, timeout: float) -> tuple[bool, str]:
    """One HEAD request to ``url``: ``(answered, "HTTP 200" | why not)``; any HTTP status counts."""
    try:
        version = importlib.metadata.version("wwts")
    except importlib.metadata.PackageNotFoundError:
        version = None
    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": f"wwts/{version} doctor"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # honours HTTPS_PROXY
            return True, f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:  # the server answered: reachable
        return True, f"HTTP {exc.code}"
    except Exception as exc:
        reason = getattr(exc, "reason", None)
        return False, str(reason) if reason else describe(exc)


def hub_status(timeout: float = HUB_TIMEOUT_S) -> dict:
    """Whether the model hub answers, without waiting more than ``timeout`` (+0.5) seconds.

    Skipped (instant) when offline mode is on. Otherwise one HEAD request to the endpoint runs
    in a daemon thread; DNS lookups ignore socket timeouts, so the thread is abandoned rather
    than waited for when it overruns.

    Returns:
        ``{"endpoint", "offline", "checked", "reachable": bool | None, "detail", "seconds"}``.
    """
    endpoint = hub_endpoint()
    if hub_offline():
        return {"endpoint": endpoint, "offline": True, "checked": False, "reachable": None,
                "detail": "offline mode (HF_HUB_OFFLINE): the hub is not contacted", "seconds": 0.0}
    result: dict[str, Any] = {}

    def worker() -> None:
        result["reachable"], result["detail"] = _head(endpoint, timeout)

    start = time.monotonic()
    thread = threading.Thread(target=worker, name="wwts-hub-check", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    seconds = round(time.monotonic() - start, 2)
    if "reachable" not in result:
        return {"endpoint": endpoint, "offline": False, "checked": True, "reachable": False,
                "detail": f"no answer within {timeout:g} s", "seconds": seconds}
    return {"endpoint": endpoint, "offline": False, "checked": True, "reachable": result["reachable"],
            "detail": result["detail"], "seconds": seconds}


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
    if hub_offline():
        raise ModelLoadError(offline_message(repo_id, cache))

    status = hub_status(timeout=3.0)
    if not status.get("reachable"):
        raise ModelLoadError(f"model {repo_id!r} is not in the local cache ({cache}) and the model hub "
                             f"({status.get('endpoint')}) cannot be reached ({status.get('detail')}): "
                             f"{hub_hint()}; or take it from ModelScope: --model modelscope:ORG/NAME or "
                             "WWTS_HUB=modelscope (pip install 'wwts[modelscope]')")
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


def scan_cache(cache_dir: str | os.PathLike) -> Any:
    """``huggingface_hub.scan_cache_dir(cache_dir)``, or ``None`` when the folder does not exist yet.

    Returns:
        An ``HFCacheInfo`` (its ``repos`` with their revisions, sizes in bytes) or ``None``.

    Raises:
        Exception: what ``scan_cache_dir`` raises for a folder it cannot read (not a missing one).
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        return scan_cache_dir(cache_dir)
    except CacheNotFound:
        return None


def cached_model(repo_id: str, cache_dir: str | os.PathLike, *, scan: Any = None) -> dict:
    """Whether hub model ``repo_id`` is in the hub cache ``cache_dir`` (no network).

    A model counts as cached when its ``config.json`` and at least one weight file
    (``*.safetensors`` / ``*.bin``) are in the snapshot of its ``main`` ref.

    Args:
        repo_id: hub id.
        cache_dir: hub cache folder.
        scan: a ``scan_cache(cache_dir)`` result to reuse (default: the folder is scanned).

    Returns:
        ``{"cached": bool, "path": snapshot folder | None, "size_bytes": int | None,
        "revisions": int}`` (size of the ``main`` snapshot on disk; revisions of ``repo_id``
        in the cache).
    """
    info = scan if scan is not None else scan_cache(cache_dir)
    repo = next((r for r in (info.repos if info else ()) if r.repo_type == "model" and r.repo_id == repo_id), None)
    main = repo.refs.get("main") if repo else None
    names = {f.file_path.relative_to(main.snapshot_path).as_posix() for f in main.files} if main else set()
    if "config.json" not in names:
        return {"cached": False, "path": None, "size_bytes": None, "revisions": len(repo.revisions) if repo else 0}
    weights = any(n.endswith((".safetensors", ".bin")) for n in names)
    return {"cached": weights, "path": str(main.snapshot_path), "size_bytes": main.size_on_disk,
            "revisions": len(repo.revisions)}


def cache_facts(cache_dir: str | None = None, *, check_hub: bool = True, hub_timeout: float = HUB_TIMEOUT_S) -> dict:
    """Model cache location, which default models are cached, and the hub's reachability.

    Args:
        cache_dir: hub cache to inspect (default: ``hub_cache_dir()``).
        check_hub: False skips the network check (``hub["checked"]`` False).
        hub_timeout: seconds for the check (see ``hub_status``).

    Returns:
        ``{"cache_dir", "hf_home", "endpoint", "offline", "hub": hub_status(), "defaults":
        [{"key", "name", "task", "lang", "cached", "path", "size_bytes", "revisions"}]}``; a
        default whose facts could not be read has ``cached`` False and an ``error`` line.
    """
    cache_dir = cache_dir or hub_cache_dir()
    scan, scan_error = None, None
    try:
        scan = scan_cache(cache_dir)
    except Exception as exc:
        scan_error = describe(exc)
    defaults = []
    for key, spec in DEFAULT_MODELS.items():
        row: dict[str, Any] = {"key": key, "name": spec.name, "task": spec.task, "lang": spec.lang}
        try:
            if scan_error:
                row.update({"cached": False, "path": None, "size_bytes": None, "error": scan_error})
            else:
                row.update(cached_model(spec.name, cache_dir, scan=scan))
        except Exception as exc:
            row.update({"cached": False, "path": None, "size_bytes": None, "error": describe(exc)})
        defaults.append(row)
    if check_hub:
        hub = hub_status(hub_timeout)
    else:
        hub = {"endpoint": hub_endpoint(), "offline": hub_offline(), "checked": False, "reachable": None,
               "detail": "not checked", "seconds": 0.0}
    return {"cache_dir": str(cache_dir), "hf_home": os.environ.get("HF_HOME"), "endpoint": hub_endpoint(),
            "offline": hub_offline(), "hub": hub, "defaults": defaults}
