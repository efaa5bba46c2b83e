"""Zero-shot classification on a saved OpenVINO / ONNX Runtime conversion, without torch or
transformers.

Importing torch and transformers and loading the weights costs 2-3 s before the first image, more
than a hundred photos take on OpenVINO (issue 12's prototype, and ``make bench``). A run that loaded
the model once on a backend saved an export (``core.backends`` ``save_facts``, by ``bundles.py``):
both towers' conversions and the model facts scoring needs. ``load_compiled_task`` serves a later run
with the same model, backend and precision from that bundle: pixels from ``core.input.ImagePreprocessor``
(Pillow + NumPy, equal to the transformers processor's ``pixel_values``: tests/test_preprocess.py),
label tokens from ``core.models.TextTokenizer`` (the ``tokenizers`` library, equal to the model's
transformers tokenizer: tests/test_tokenizer.py), towers from the runtime, scores in NumPy. The
records, store keys and text features are those of ``classify.ClassifyTask`` on the same backend.

The same serves a run whose image tower is torch's on the CPU and whose text tower is OpenVINO's
(``--backend auto`` on an AMX CPU, ``backends.auto_text_backend``): its bundle holds the text
tower, and the image tower loads with the model only when a photo is not in the embedding store, so
re-labelling stored photos needs no torch.

This module must not import torch or transformers at import time (``lazy_torch_image_tower`` imports
them when it loads the model).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .. import models
from ..backends import LazyTower, export_towers, load_export
from ..config import RunConfig
from ..hardware import HOST_CPU
from ..input import ImagePreprocessor, UnsupportedPreprocessor
from ..store import StoredEmbedding
from .label_setup import check_text_hygiene
from .stored import collate_stored
from .zero_shot import ZeroShotTask

log = logging.getLogger(__name__)


#: Photos whose path-index rows are checked before a ``torch`` bundle's run starts without torch.
STORE_SAMPLE = 32


def sample_indices(count: int, sample: int = STORE_SAMPLE) -> list[int]:
    """Up to ``sample`` indices of a ``count``-long list, evenly spread, first and last included
    (every index when ``count <= sample``)."""
    if count <= sample:
        return list(range(count))
    return sorted({round(i * (count - 1) / (sample - 1)) for i in range(sample)})


class CompiledClassifyTask(ZeroShotTask):
    """``ZeroShotTask`` on a conversion bundle: NumPy in, NumPy out, no torch (``uses_torch`` is
    False: the engine runs ``forward`` without inference mode or autocast).

    ``prepare``: one RGB image → ``pixel_values (1, 3, S, S)`` float32 (``ImagePreprocessor``).
    ``collate``: B of those → ``{"pixel_values": (B, 3, S, S)}`` (store hits in ``"stored"``).

    Attributes:
        bundle: the verified export (``load_export``).
        preprocessor: the image preprocessing; text_tokenizer: the label tokenizer.
    """

    uses_torch = False

    def __init__(self, config: RunConfig, bundle: dict[str, Any], preprocessor: ImagePreprocessor,
                 tokenizer: Any, backend: Any, dtype: str = "float32") -> None:
        """``dtype``: the torch image tower's compute dtype on a ``torch`` bundle (its store key);
        float32 (the inputs' dtype) on OpenVINO / ONNX Runtime, whose precision their encoder gives."""
        self.facts = bundle["facts"]
        super().__init__(config, None, None, HOST_CPU, dtype, model_type=self.facts.get("model_type") or "")
        self.bundle = bundle
        self.preprocessor = preprocessor
        self.text_tokenizer = tokenizer
        self.backend = backend

    @property
    def image_recipe(self) -> dict[str, Any]:
        """The image processor's configuration as the loading run recorded it (same store key)."""
        return self.facts["image_recipe"]

    @property
    def weights_folder(self) -> str | None:
        """The folder the loading run read the weights from."""
        return self.facts.get("weights_folder")

    @property
    def input_size(self) -> int | None:
        """Side in pixels of the model's input."""
        return self.facts.get("input_size") or self.preprocessor.input_size

    def text_max_length(self) -> int | None:
        """The text tower's token limit the loading run found."""
        return self.facts.get("text_max_length")

    def tokenize(self, texts: list[str], max_length: int | None, pad_to_max_length: bool) -> dict[str, Any]:
        """``TextTokenizer``: int64 NumPy ``input_ids (N, T)``..."""
        return self.text_tokenizer(list(texts), max_length=max_length, pad_to_max_length=pad_to_max_length)

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Token counts without truncation."""
        return self.text_tokenizer.lengths(list(texts))

    @property
    def logit_scale(self) -> float:
        """``logit_scale.exp()`` as the loading run read it from the weights."""
        return float(self.facts["logit_scale"])

    @property
    def logit_bias(self) -> float | None:
        """SigLIP's ``logit_bias`` for ``--multi-label`` (``None`` for CLIP-style models)."""
        bias = self.facts.get("logit_bias")
        return None if self.label_set.neutral is not None or bias is None else float(bias)

    def open(self) -> None:
        """Make both towers' encoders (compiled or opened now, or on first use where their
        precision is known beforehand; a ``torch`` bundle's image tower loads on first use) and
        open the store of the model key."""
        if self.image_encoder is None:
            image, self.text_encoder = export_towers(self.bundle, self.backend, self.input_size)
            self.image_encoder = image if image is not None else lazy_torch_image_tower(
                self.config, self.dtype, self.backend.threads)
        self.use_store()

    def store_holds(self, paths: list[Path], sample: int = STORE_SAMPLE) -> bool:
        """Whether the store (after ``open``) holds the embeddings of ``paths`` as the files are
        now, judged by the path index on ``sample_indices(len(paths), sample)`` of them: the first,
        the last (new photos tend to sort last) and evenly between (a 100,000-photo run is not
        stat-ed twice); ``False`` without a store."""
        indexed = getattr(self.store, "indexed", None)
        if indexed is None or not paths:
            return False
        return all(indexed(paths[i]) for i in sample_indices(len(paths), sample))

    def setup(self) -> None:
        """``open``, then encode the label prompts once (``(L, D)`` float32 ``text_features``)."""
        self.open()
        if self.text_features is None:
            self.text_features = self._label_features()

    def to(self, device: Any, dtype: Any) -> None:
        """Nothing to move: the runtime holds the towers; runs ``setup``."""
        self.setup()

    def prepare(self, image: Any) -> np.ndarray:
        """One RGB image → ``pixel_values (1, 3, S, S)`` float32."""
        return self.preprocessor(image)

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """B ``(1, 3, S, S)`` arrays (or ``StoredEmbedding``) → ``{"pixel_values": (M, 3, S, S)}``
        (``"stored"`` when some came from the store)."""
        return collate_stored(items, StoredEmbedding, np.concatenate)


def lazy_torch_image_tower(config: RunConfig, dtype: str, threads: int | None) -> LazyTower:
    """The torch image tower of a run started from a ``torch`` export (torch's CPU image tower with
    an OpenVINO text tower, ``backends.auto_text_backend``): a ``LazyTower`` that loads the model
    with transformers on the first ``encode``, i.e. only when a photo is not in the embedding store.
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
        from .classify import drop_text_tower, load_dual_encoder

        log.info("a photo is not in the embedding store: loading the image tower with torch")
        hardware.configure_threads(threads)
        model, _ = load_dual_encoder(config, models.model_for("classify", config.lang, config.model))
        drop_text_tower(model)  # the labels are OpenVINO's
        return TorchTower(model.eval(), torch.device("cpu"), getattr(torch, dtype), "image")

    return LazyTower(load, "torch", "image")


def numpy_inputs(image_recipe: dict[str, Any], folder: str | Path) -> tuple[ImagePreprocessor, Any]:
    """The torch-free task's inputs for a model: its ``ImagePreprocessor`` (from the image
    processor's configuration) and ``TextTokenizer`` (from the model folder).

    Raises:
        UnsupportedPreprocessor / models.UnsupportedTokenizer: settings or a tokenizer they do not
            reproduce (the run loads the model with transformers instead).
        KeyError: a configuration without a setting they need.
    """
    return ImagePreprocessor.from_config(image_recipe), models.TextTokenizer.from_folder(Path(folder))


def load_compiled_task(config: RunConfig, backend: Any, dtype: str | None = None) -> CompiledClassifyTask | None:
    """The torch-free classify task of this run, or ``None`` when the run must load the model with
    transformers: not a plain classify run (search, embed), the backend is torch with its text tower
    on torch (or ``dtype``, the torch image tower's, is unknown), no verified bundle for this model
    and backend (first run, changed model, removed conversion), or an image processor or tokenizer
    that ``ImagePreprocessor`` / ``TextTokenizer`` do not reproduce.

    A ``torch`` bundle's run starts without torch; its image tower loads with the model when a
    photo is not in the embedding store (``lazy_torch_image_tower``).

    Raises:
        ModelLoadError: the model is not cached and cannot be downloaded (``models.resolve``).
        UsageError: an unknown ``--vocab``; with ``--strict-labels``, duplicate or contained labels.
    """
    if config.retrieval or config.task != "classify" or backend is None:
        return None
    if backend.name == "torch" and (backend.text_backend != "openvino" or dtype is None or not config.store):
        return None  # without the store every photo needs torch's image tower: load the model now
    folder = models.resolve(models.model_for("classify", config.lang, config.model))
    bundle = load_export(folder, backend.name, bool(backend.int8))
    if bundle is None:
        return None
    try:
        preprocessor, tokenizer = numpy_inputs(bundle["facts"]["image_recipe"], folder)
    except (UnsupportedPreprocessor, models.UnsupportedTokenizer, KeyError) as exc:
        log.info("loading the model with transformers: %s", exc)
        return None
    check_text_hygiene(config)  # before the towers load: --strict-labels stops here
    return CompiledClassifyTask(config, bundle, preprocessor, tokenizer, backend,
                                dtype=dtype if backend.name == "torch" else "float32")
