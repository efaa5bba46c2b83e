"""Bundles: what a classify run on OpenVINO or ONNX Runtime needs besides the two converted towers,
saved so that later runs load neither torch nor transformers (2-3 s of start-up on a laptop CPU,
more than the model work of a hundred photos).

The run that converts (torch and the model loaded) writes one JSON file per model folder, backend,
backend version and precision request (``--quantize int8`` or not) under
``conversions/bundles/``: the model's identity (``build.identity_of``: folder, class, every config
and weight file's name, size and mtime), each tower's conversion folder and the fields that keyed
it, and the facts scoring needs (``model_type``, ``logit_scale``, ``logit_bias``, the image
processor's configuration, the text tower's token limit and input names). ``load_bundle`` serves a
bundle only when the model folder's identity is unchanged and both conversions verify
(``cache.load_entry``); otherwise it returns ``None`` and the run loads the model with torch, which
converts again where needed and writes a new bundle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from . import cache
from .build import identity_of

log = logging.getLogger(__name__)

#: Format of the bundle files; another number is not read.
BUNDLE_VERSION = 1


def runtime_version(backend: str) -> str:
    """The version of the runtime that runs ``backend``'s conversions (imports it). ``torch``: a
    torch image tower beside an OpenVINO text tower (``select.auto_text_backend``), both versions
    (torch's read from its metadata: no import)."""
    if backend == "torch":
        from ..hardware import torch_version
        from .openvino import version

        return f"torch {torch_version()}; openvino {version()}"
    if backend == "openvino":
        from .openvino import version
    else:
        from .onnxruntime import version
    return version()


def bundle_path(folder: str | os.PathLike, backend: str, int8: bool) -> Path:
    """The bundle file of the model in ``folder`` on ``backend`` (``openvino`` / ``onnxruntime``;
    ``torch``: the torch image tower with the OpenVINO text tower) at its float or int8 precision,
    for the installed runtime version."""
    request = {"folder": str(Path(folder).resolve()), "backend": backend, "version": runtime_version(backend),
               "int8": bool(int8), "format": BUNDLE_VERSION}
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode("utf-8")).hexdigest()[:20]
    return cache.cache_root() / "bundles" / f"{Path(folder).name[-40:]}-{backend}-{digest}.json"


def write_bundle(folder: str | os.PathLike, backend: str, int8: bool, identity: dict[str, Any],
                 image_manifest: dict[str, Any] | None, text_manifest: dict[str, Any], facts: dict[str, Any]) -> Path:
    """Save the bundle of a model whose towers were just converted (or loaded from the cache).

    Args:
        folder: the model folder the weights were loaded from.
        backend / int8: as for ``bundle_path``.
        identity: ``build.model_identity`` of the loaded model.
        image_manifest / text_manifest: the two conversions' manifests (their ``fields``);
            ``image_manifest`` is ``None`` for ``torch`` (the image tower is torch's own).
        facts: JSON-ready model facts (``model_type``, ``logit_scale``...), kept as they are.

    Raises:
        OSError: the cache folder cannot be written.
    """
    path = bundle_path(folder, backend, int8)
    towers = {tower: {"dir": str(cache.entry_dir(manifest["fields"].get("backend", backend), manifest["fields"])),
                      "fields": manifest["fields"]}
              for tower, manifest in (("image", image_manifest), ("text", text_manifest)) if manifest is not None}
    data = {"version": BUNDLE_VERSION, "backend": backend, "int8": bool(int8),
            "identity": json.loads(json.dumps(identity, default=str)), "towers": towers, "facts": facts}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_bundle(folder: str | os.PathLike, backend: str, int8: bool) -> dict[str, Any] | None:
    """The verified bundle of the model in ``folder`` on ``backend``, or ``None`` when there is no
    bundle, it is unreadable or of another format, the model's files changed since (another
    revision, re-saved weights), or a conversion it names is missing, stale or corrupt (that
    conversion is removed by ``cache.load_entry``). Each tower's entry gains ``manifest``.
    """
    path = bundle_path(folder, backend, int8)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != BUNDLE_VERSION:
        return None
    saved = data.get("identity") or {}
    now = json.loads(json.dumps(identity_of(str(folder), str(saved.get("class"))), default=str))
    if any(now.get(k) != saved.get(k) for k in ("folder", "files")) or now.get("folder") is None:
        log.info("the model in %s changed since %s was saved: loading it with torch", folder, path.name)
        return None
    for tower in ("image", "text") if backend != "torch" else ("text",):
        entry = (data.get("towers") or {}).get(tower) or {}
        manifest = cache.load_entry(Path(entry.get("dir", "")), entry.get("fields") or {})
        if manifest is None:
            return None
        entry["manifest"] = manifest
    return data


def bundle_encoders(bundle: dict[str, Any], choice: Any, input_size: int | None) -> tuple[Any, Any]:
    """The image and text encoders of a verified bundle (``load_bundle``) on the run's backend
    ``choice`` (``select.BackendChoice``: device, ``--dtype``, threads): OpenVINO compiles the
    saved IR (from its blob cache after the first time), ONNX Runtime opens sessions, each when
    first used where its precision is known beforehand (a run served by the embedding store may
    never need a tower). No torch. A ``torch`` bundle gives ``(None, text encoder)``: its image
    tower is loaded with the model when a photo needs it (``tasks.compiled``).

    Raises:
        whatever the runtime raises for a model it cannot load or compile.
    """
    image, text = bundle["towers"].get("image"), bundle["towers"]["text"]
    names = list(text["fields"].get("inputs") or ["input_ids"])
    if choice.name == "torch":  # the caller gives the image tower (tasks.compiled)
        from .openvino import compiled_text_encoder

        return None, compiled_text_encoder(Path(text["dir"]) / "model.xml", "CPU", choice.threads, names,
                                           text["manifest"], lazy=True)
    if choice.name == "openvino":
        from .openvino import compiled_image_encoder, compiled_text_encoder

        return (compiled_image_encoder(Path(image["dir"]) / "model.xml", choice.device, choice.dtype, choice.threads,
                                       input_size, image["manifest"], lazy=True),
                compiled_text_encoder(Path(text["dir"]) / "model.xml", choice.device, choice.threads, names,
                                      text["manifest"], lazy=choice.device == "CPU"))
    from .onnxruntime import OnnxImageEncoder, OnnxTextEncoder, check_dtype, session

    check_dtype(choice.dtype)

    def opener(tower: dict[str, Any]) -> Callable[[], Any]:
        return lambda: session(Path(tower["dir"]) / "model.onnx", choice.providers, choice.threads)

    return (OnnxImageEncoder(None, image["manifest"], bool(choice.int8), factory=opener(image)),
            OnnxTextEncoder(None, names, text["manifest"], factory=opener(text)))
