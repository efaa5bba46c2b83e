"""How a caption run uses the store (``core.store.CaptionStore``): its key, and a run that needs no model.

- ``caption_key_parts``: what decides a caption besides the generation settings and the weights'
  identity (which ``StoreOpener`` adds): model type, backend, dtype, quantization, wwts' decode
  recipe. Read from the model folder's ``config.json``: no torch, no transformers.
- ``generation_settings``: what changes the text (``--max-new-tokens``, ``--min-new-tokens``,
  ``--num-beams``, ``--repetition-penalty``, ``--prompt``, ``--lang``, the chat pixel budget):
  part of every caption row's key, so other settings compute (and keep) their own captions.
- ``StoredCaptionTask``: the task of a run whose photos all have their caption stored (checked by
  the path index alone, ``CaptionStore.holds``): it loads no model, imports no torch, and serves
  each photo from the store; a photo that turns out not to be there after all (changed meanwhile)
  loads the real task then, once, and is captioned by it (decoded at full resolution: this task
  does not know the model's input size, so such a photo skips the draft decode a fresh run uses,
  and its caption may differ from a fresh run's).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import hardware, models
from ..config import RunConfig
from ..input import DECODE_RECIPE
from ..output import CaptionResult
from ..store import CaptionStore, SqliteStore, StoredCaption, StoreOpener, caption_settings, default_store_dir
from .task import Task

log = logging.getLogger(__name__)


def generation_settings(config: RunConfig) -> dict[str, Any]:
    """The settings that change a caption's text, JSON-ready (see the module docstring)."""
    return {"prompt": config.prompt, "lang": config.lang, "max_new_tokens": config.max_new_tokens,
            "min_new_tokens": config.min_new_tokens, "num_beams": config.num_beams,
            "repetition_penalty": config.repetition_penalty, "max_pixels": config.extra.get("max_pixels")}


def caption_key_parts(folder: Path | str, backend: str, dtype: str, quantize: str | None) -> dict[str, Any]:
    """The store key parts of a caption model in ``folder`` computed on ``backend`` in ``dtype``."""
    try:
        model_type = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        model_type = None
    return {"task": "caption", "model_type": model_type, "backend": backend, "dtype": dtype,
            "quantize": quantize, "decode_recipe": DECODE_RECIPE}


def open_caption_store(config: RunConfig, backend: str, dtype: str) -> CaptionStore | None:
    """The run's caption store, or ``None`` (``--no-store``; weights that cannot be identified,
    said in one warning by ``StoreOpener``). Opening it may resolve (download) the model.

    Raises:
        ModelLoadError: the model is not cached and cannot be downloaded (``models.resolve``).
    """
    if not config.store:
        return None
    name = models.model_for("caption", config.lang, config.model)
    folder = models.resolve(name)
    store_dir = Path(config.store_dir) if config.store_dir else default_store_dir()
    if backend != "torch":  # the runtime's precision follows --dtype (OpenVINO: f32 unless asked)
        dtype = f"{dtype}/{config.dtype}"
    store = StoreOpener(store_dir, name).open(folder, caption_key_parts(folder, backend, dtype, config.quantize))
    if not isinstance(store, SqliteStore):
        return None
    return CaptionStore(store, caption_settings(generation_settings(config)))


def stored_caption_task(config: RunConfig, backend: str, dtype: str, paths: Sequence[Path],
                        load: Callable[[], Task]) -> StoredCaptionTask | None:
    """A ``StoredCaptionTask`` when the caption store holds every one of ``paths`` (path index only;
    at least one), else ``None`` (the run loads the model; the store is opened again by it)."""
    if not paths:  # a Ray actor's plan (its photos come later): nothing to check, load the model
        return None
    store = open_caption_store(config, backend, dtype)
    if store is None or not store.holds(paths):
        return None
    log.info("every photo's caption is in the store (%s): no model loaded", store.path)
    return StoredCaptionTask(config, store, load)


class StoredCaptionTask(Task):
    """A caption run served from the caption store (see the module docstring).

    Args:
        config: the run's settings.
        store: the run's ``CaptionStore`` (the engine's lookup reads it before decoding).
        load: makes the real task (model loaded, moved, with its own store); called on a miss.
    """

    name = "caption"
    record_type = CaptionResult
    uses_torch = False

    def __init__(self, config: RunConfig, store: CaptionStore, load: Callable[[], Task]) -> None:
        super().__init__(config, None, None, hardware.HOST_CPU, "float32")
        self.store = store
        self._load = load
        self._real: Task | None = None

    def to(self, device: Any, dtype: Any) -> None:
        """Nothing to move until the real task is loaded."""
        if self._real is not None:
            self._real.to(device, dtype)

    def prepare(self, image: Any) -> Any:
        """The image itself (every caption family's processor runs in ``collate``)."""
        return image

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """``{"items": items}``: stored captions and, rarely, images that were not stored."""
        return {"items": list(items)}

    def forward(self, inputs: dict[str, Any]) -> tuple[list[Any], Any]:
        """``(items, the real task's outputs for the images among them or None)``; the real
        task is loaded on the first image (under inference mode and its autocast)."""
        items = inputs["items"]
        images = [item for item in items if not isinstance(item, StoredCaption)]
        if not images:
            return items, None
        if self._real is None:
            log.info("a photo is not in the caption store: loading the model")
            self._real = self._load()
            self._real.store = self.store  # one store: it holds the facts the engine remembered
        real = self._real
        import torch

        keys = inputs.get("keys")
        real_inputs = real.collate(images)
        if keys is not None:
            real_inputs["keys"] = [k for k, item in zip(keys, items) if not isinstance(item, StoredCaption)]
        with torch.inference_mode(), hardware.autocast(real.device, real.dtype):
            return items, real.forward(real_inputs)

    def postprocess(self, outputs: tuple[list[Any], Any], bases: list[CaptionResult]) -> list[CaptionResult]:
        """Each base record with its stored caption, or the real task's for an image."""
        items, real_outputs = outputs
        fresh_bases = [b for b, item in zip(bases, items) if not isinstance(item, StoredCaption)]
        fresh = iter(self._real.postprocess(real_outputs, fresh_bases) if fresh_bases else [])
        return [replace(base, caption=item.text) if isinstance(item, StoredCaption) else next(fresh)
                for base, item in zip(bases, items)]

    def run_info(self) -> dict[str, Any]:
        """The real task's, once loaded; else the settings and the store."""
        if self._real is not None:
            return self._real.run_info()
        return {"prompt": self.config.prompt, "max_new_tokens": self.config.max_new_tokens,
                "num_beams": self.config.num_beams, "store": str(self.store.path)}
