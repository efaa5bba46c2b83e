"""A dual encoder served from its saved export (a conversion for OpenVINO / ONNX Runtime plus the
facts scoring needs), without torch or transformers.

Importing torch and transformers and loading the weights costs 2-3 s before the first image, more
than a hundred photos take on OpenVINO (issue 12's prototype, and ``make bench``). A run that loaded
the model once on a backend saved its export (``dual_encoder.save_export``); ``from_export`` makes
the ``DualEncoder`` of a later run with the same model, backend and precision from it: pixels from
``core.input.ImagePreprocessor``, label tokens from ``core.models.TextTokenizer``, towers from the
runtime. The records, store keys and text features are those of the transformers-loaded model on
the same backend.

The same serves a run whose image tower is torch's on the CPU and whose text tower is OpenVINO's
(``--backend auto`` on an AMX CPU, ``backends.auto_text_backend``): its export holds the text
tower, and the image tower loads with the model only when a photo is not in the embedding store
(``lazy_torch_image_tower``), so re-labelling stored photos needs no torch.

This module must not import torch or transformers at import time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import models
from ..backends import LazyTower, load_export
from ..config import RunConfig
from ..errors import NotReproducible
from .dual_encoder import DualEncoder, drop_text_tower, numpy_inputs

log = logging.getLogger(__name__)

#: Photos whose path-index rows are checked before a ``torch`` export's run starts without torch.
STORE_SAMPLE = 32


def sample_indices(count: int, sample: int = STORE_SAMPLE) -> list[int]:
    """Up to ``sample`` indices of a ``count``-long list, evenly spread, first and last included
    (every index when ``count <= sample``)."""
    if count <= sample:
        return list(range(count))
    return sorted({round(i * (count - 1) / (sample - 1)) for i in range(sample)})


def store_holds(store: Any, paths: list[Path], sample: int = STORE_SAMPLE) -> bool:
    """Whether ``store`` holds the embeddings of ``paths`` as the files are now, judged by the
    path index on ``sample_indices(len(paths), sample)`` of them: the first, the last (new photos
    tend to sort last) and evenly between (a 100,000-photo run is not stat-ed twice); ``False``
    without a store."""
    indexed = getattr(store, "indexed", None)
    if indexed is None or not paths:
        return False
    return all(indexed(paths[i]) for i in sample_indices(len(paths), sample))


def from_export(config: RunConfig, backend: Any, dtype: str,
                load_model: Callable[[], Any]) -> DualEncoder | None:
    """The ``DualEncoder`` of this run from a saved export, or ``None`` when the run must load the
    model with transformers: no verified export for this model and backend (first run, changed
    model, removed conversion), or an image processor or tokenizer that ``numpy_inputs`` does not
    reproduce.

    Args:
        backend: the run's ``backends.BackendChoice``.
        dtype: on a ``torch`` export, the torch image tower's compute dtype (``"bfloat16"``...).
        load_model: loads the transformers model (float32, CPU) when a ``torch`` export's image
            tower is first needed.

    Raises:
        ModelLoadError: the model is not cached and cannot be downloaded (``models.resolve``).
    """
    folder = models.resolve(models.model_for("classify", config.lang, config.model))
    export = load_export(folder, backend.name, bool(backend.int8))
    if export is None:
        return None
    facts = export["facts"]
    try:
        preprocessor, tokenizer = numpy_inputs(facts["image_recipe"], folder, fast=not config.exact_pixels)
    except (NotReproducible, KeyError) as exc:
        log.info("loading the model with transformers: %s", exc)
        return None
    facts = {**facts, "input_size": facts.get("input_size") or preprocessor.input_size}
    image = lazy_torch_image_tower(load_model, dtype, backend.threads) if backend.name == "torch" else None
    return DualEncoder(facts, export=export, prepare=preprocessor, concat=np.concatenate, image=image,
                       tokenize=lambda texts, max_length, pad: tokenizer(list(texts), max_length=max_length,
                                                                          pad_to_max_length=pad),
                       token_lengths=lambda texts: tokenizer.lengths(list(texts)))


def lazy_torch_image_tower(load_model: Callable[[], Any], dtype: str, threads: int | None) -> LazyTower:
    """The torch image tower of a run started from a ``torch`` export (torch's CPU image tower with
    an OpenVINO text tower, ``backends.auto_text_backend``): a ``LazyTower`` that loads the model
    (``load_model``) on the first ``encode``, i.e. only when a photo is not in the embedding store.
    Its embeddings and store name are a ``TorchTower``'s (the same pixel_values, dtype and threads
    as a run that loaded the model first); its ``load_s`` counts as model load.

    ``encode``: ``pixel_values (B, 3, S, S)`` float32 NumPy → ``(B, D)`` float32, L2-normalised.

    Raises (from ``encode``): ``ModelLoadError`` when the model cannot be loaded (the engine ends
    the run: every image would fail the same way).
    """
    def load() -> Any:
        import torch

        from .. import hardware
        from ..backends import TorchTower

        log.info("a photo is not in the embedding store: loading the image tower with torch")
        hardware.configure_threads(threads)
        model = load_model()
        drop_text_tower(model)  # the labels are OpenVINO's
        return TorchTower(model.eval(), torch.device("cpu"), getattr(torch, dtype), "image")

    return LazyTower(load, "torch", "image")
