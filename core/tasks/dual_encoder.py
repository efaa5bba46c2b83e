"""A contrastive dual encoder (Chinese-CLIP, CLIP, SigLIP) as one value that the zero-shot, search
and embed heads use.

A ``DualEncoder`` holds the two towers (anything with ``encode(batch) -> (B, D)``: a torch module
on a device, an OpenVINO compiled model, an ONNX Runtime session), how to make their inputs (the
image ``prepare``, the label ``tokenize``) and the facts scoring needs (``facts``: logit scale and
bias, family, input size, the weights' folder). It comes from one of two sources, both made by
``tasks.load``:

- ``from_model``: the model loaded with transformers; ``build`` puts the towers on the run's backend
  (converting them for OpenVINO / ONNX Runtime on first use) and saves the export, so that a later
  run with the same model and backend starts from it;
- ``tasks.exports.from_export``: that saved export, without torch or transformers (pixels from
  ``core.input.ImagePreprocessor``, tokens from ``core.models.TextTokenizer``, both equal to the
  transformers processor's: tests/test_preprocess.py, tests/test_tokenizer.py).

Family quirks are data (``ZERO_SHOT_FAMILIES``), like open_clip's ``pretrained.py`` tables.

This module must not import torch or transformers at import time: a torch-free run goes through it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from .. import models
from ..backends import build_towers, save_facts
from ..errors import NotReproducible, UsageError, describe
from ..input import ImagePreprocessor
from .task import pixel_maker, size_dict
from .stored import processor_recipe

log = logging.getLogger(__name__)

#: A tokenizer ``model_max_length`` above this is transformers' "no limit" placeholder (1e30).
_SANE_MAX_LENGTH = 100_000

#: Zero-shot family quirks by ``model_type`` substring (``siglip`` also names ``siglip2``):
#: ``text_padding``: prompts padded to this many tokens (SigLIP was trained on text padded to 64,
#: model card google/siglip-*); ``sigmoid``: trained with a sigmoid loss and a learned
#: ``logit_bias``, so ``--multi-label`` scores use that bias instead of a neutral prompt.
ZERO_SHOT_FAMILIES: dict[str, dict[str, Any]] = {
    "siglip": {"text_padding": 64, "sigmoid": True},
}
#: The quirks of a CLIP-style family (Chinese-CLIP, CLIP): none.
CLIP_STYLE: dict[str, Any] = {"text_padding": None, "sigmoid": False}


def family_quirks(model_type: str | None) -> dict[str, Any]:
    """The ``ZERO_SHOT_FAMILIES`` entry of ``model_type`` (``CLIP_STYLE`` when none matches)."""
    for name, quirks in ZERO_SHOT_FAMILIES.items():
        if name in (model_type or ""):
            return quirks
    return CLIP_STYLE


class DualEncoder:
    """Image tower, text tower, their input makers and the model's facts.

    Args:
        facts: ``model_type``, ``logit_scale`` (already ``exp()``-ed), ``logit_bias`` (SigLIP's raw
            bias, else ``None``), ``weights_folder`` (the store key's weights), ``image_recipe`` (the
            image processor's configuration), ``input_size`` (pixels, e.g. 224), ``text_max_length``
            (tokens, or ``None``).
        prepare: one RGB image → ``pixel_values (1, 3, S, S)`` float32 (torch tensor or NumPy).
        concat: joins B of those into ``(B, 3, S, S)`` (``torch.cat`` / ``np.concatenate``).
        tokenize: ``(texts, max_length, pad_to_max_length)`` → ``input_ids (N, T)``, ... truncated
            to ``max_length``, padded to the longest or to ``max_length``.
        token_lengths: texts → token count of each without truncation (special tokens included).
        model: the torch module (``from_model``), or ``None`` for a saved export.
        export: the verified saved export (``backends.load_export``), or ``None``.
        image: a tower known before ``build``: a ``torch`` export's image tower (a ``LazyTower``
            that loads the model on first use).
        image_size: the run's image input side in pixels (``--image-size``: ``prepare`` makes
            ``S = image_size`` and the towers run at it); ``None``: ``facts["input_size"]``.

    Attributes:
        image / text: the towers, after ``build``: ``encode(pixel_values (B, 3, S, S)) -> (B, D)``
            and ``encode(tokens) -> (L, D)``, float32 rows of L2 norm 1.
    """

    def __init__(self, facts: dict[str, Any], *, prepare: Callable[[Any], Any], concat: Callable[[list], Any],
                 tokenize: Callable[..., dict[str, Any]], token_lengths: Callable[[list[str]], list[int]],
                 model: Any = None, export: dict[str, Any] | None = None, image: Any = None,
                 image_size: int | None = None) -> None:
        self.facts = facts
        self.image_size: int | None = image_size or facts.get("input_size")
        self.prepare, self.concat = prepare, concat
        self.tokenize, self.token_lengths = tokenize, token_lengths
        self.model, self.export = model, export
        self.image: Any = image
        self.text: Any = None

    @property
    def model_type(self) -> str:
        """transformers' ``model_type`` (``chinese_clip``, ``clip``, ``siglip``...)."""
        return self.facts.get("model_type") or ""

    @property
    def quirks(self) -> dict[str, Any]:
        """This family's ``ZERO_SHOT_FAMILIES`` entry."""
        return family_quirks(self.model_type)

    @property
    def uses_torch(self) -> bool:
        """Whether the towers take torch tensors (the engine runs them under inference mode and
        autocast); ``False`` for a saved export: NumPy in, NumPy out."""
        return self.model is not None

    def build(self, device: Any, dtype: Any, backend: Any, *, example: list[str], head: str | None) -> None:
        """Make the towers for ``device`` / ``dtype`` on ``backend`` (``backends.BackendChoice``,
        ``None``: torch). A saved export's towers are made once (compiled now, or on first use
        where their precision is known beforehand); a transformers model's on every call for torch
        (a move to another device) and once for the other backends, converting on the first run and
        then saving the export (``save_export``). ``example``: prompts tokenized as the text
        tower's export example; ``head``: ``RunConfig.head`` (search / embed keep their
        text on torch, see ``text_beside_torch``).

        Raises:
            ModelLoadError: the model cannot be converted for the backend.
        """
        if self.model is None:
            if self.text is None:
                from ..backends import export_towers

                image, self.text = export_towers(self.export, backend, self.image_size)
                self.image = image if image is not None else self.image
            return
        if self.image is not None and backend is not None and backend.name != "torch":
            return
        backend = text_beside_torch(self, backend, head)
        self.image, self.text = build_towers(
            self.model, device, dtype, backend, input_size=self.image_size, prepare=self.prepare,
            tokens=lambda: dict(self.tokenize(example[:2], self.facts.get("text_max_length"), False)),
            labels=lambda: dict(self.tokenize(example, self.facts.get("text_max_length"), False)))
        if backend is not None and backend.text_backend != "torch":
            save_export(self, backend)
            if getattr(self.text, "backend", "torch") != "torch":
                drop_text_tower(self.model)


def from_model(model: Any, processor: Any, *, fast: bool = False, image_size: int | None = None) -> DualEncoder:
    """The ``DualEncoder`` of a model transformers loaded (float32, on the CPU) and its processor:
    pixels from ``base.pixel_maker`` (``pixel_values (1, 3, S, S)`` torch tensors, the same recipe
    as a saved export's; ``fast``: its fast resize; ``image_size``: another side S, with
    interpolated position embeddings), tokens from its tokenizer, facts read from the weights and
    configurations.

    Raises:
        UsageError: ``image_size`` for a model that cannot interpolate (``check_image_size``) or
            whose image processor wwts does not reproduce.
    """
    import torch

    if image_size:
        check_image_size(model, image_size)
    image_processor = getattr(processor, "image_processor", processor)
    tokenizer = getattr(processor, "tokenizer", processor)
    bias = getattr(model, "logit_bias", None)
    facts = {"weights_folder": getattr(model, "name_or_path", None),
             "model_type": getattr(model.config, "model_type", "") or "",
             "logit_scale": float(model.logit_scale.detach().float().exp()),
             "logit_bias": None if bias is None else float(bias.detach().float().reshape(-1)[0]),
             "image_recipe": processor_recipe(image_processor),
             "input_size": _input_size(image_processor, model.config),
             "text_max_length": _text_max_length(tokenizer, model.config)}

    def tokenize(texts: list[str], max_length: int | None, pad_to_max_length: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"padding": "max_length" if pad_to_max_length else True, "truncation": True,
                                  "return_tensors": "pt"}
        if max_length:
            kwargs["max_length"] = max_length
        return dict(tokenizer(texts, **kwargs))

    return DualEncoder(
        facts, model=model, concat=concat_pixels, tokenize=tokenize, image_size=image_size,
        prepare=pixel_maker(image_processor, fast=fast, image_size=image_size),
        token_lengths=lambda texts: [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]])


def concat_pixels(items: list[Any]) -> Any:
    """B ``pixel_values (1, 3, S, S)`` CPU torch tensors → one ``(B, 3, S, S)`` tensor, joined by
    NumPy: ``torch.cat`` runs on torch's intra-op threads, and on a busy 2-core machine it took
    82 ms for 8 images at 224 px where ``np.concatenate`` took 0.3 ms (measured here)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.concatenate([np.asarray(item) for item in items]))


def check_image_size(model: Any, image_size: int) -> None:
    """Refuse ``--image-size`` for a model whose ``get_image_features`` has no
    ``interpolate_pos_encoding`` (transformers 5: CLIP, Chinese-CLIP, SigLIP, AltCLIP have it;
    SigLIP 2 takes any size through its own ``spatial_shapes`` instead), or whose patch size does
    not divide ``image_size``.

    Raises:
        UsageError: one line naming the model type and what it lacks.
    """
    import inspect

    model_type = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    try:
        takes = "interpolate_pos_encoding" in inspect.signature(model.get_image_features).parameters
    except (TypeError, ValueError, AttributeError):
        takes = False
    if not takes:
        raise UsageError(f"--image-size {image_size}: {model_type} models cannot interpolate their position "
                         "embeddings to another input size (no interpolate_pos_encoding); run without it")
    patch = getattr(getattr(model.config, "vision_config", None), "patch_size", None)
    if isinstance(patch, int) and patch > 0 and image_size % patch:
        raise UsageError(f"--image-size {image_size}: must be a multiple of the model's patch size, {patch} "
                         f"(e.g. {image_size - image_size % patch or patch})")


def _input_size(image_processor: Any, model_config: Any) -> int | None:
    """Side in pixels of the model's input: the image processor's crop / size, else the vision
    config's ``image_size``."""
    for attr in ("crop_size", "size"):
        size = size_dict(getattr(image_processor, attr, None))
        for key in ("height", "shortest_edge"):
            if size.get(key):
                return int(size[key])
    return getattr(getattr(model_config, "vision_config", None), "image_size", None)


def _text_max_length(tokenizer: Any, model_config: Any) -> int | None:
    """Most tokens the text tower takes: the tokenizer's ``model_max_length`` when it is a real
    limit, capped by the text config's ``max_position_embeddings``; ``None`` if neither says."""
    limits = []
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < _SANE_MAX_LENGTH:
        limits.append(tok_max)
    positions = getattr(getattr(model_config, "text_config", None) or model_config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    return min(limits) if limits else None


def drop_text_tower(model: Any) -> None:
    """Free a dual encoder's torch text tower (``text_model``, ``text_projection``) where another
    runtime runs it (OpenVINO, converted already): ~400 MB of float32 BERT-base weights that would
    otherwise sit beside that runtime's copy. ``get_text_features`` no longer works afterwards."""
    import torch

    for name in ("text_model", "text_projection"):
        if isinstance(getattr(model, name, None), torch.nn.Module):
            setattr(model, name, None)


def numpy_inputs(image_recipe: dict[str, Any], folder: str | Path, *, fast: bool = False) -> tuple[ImagePreprocessor, Any]:
    """The torch-free inputs of a model: its ``ImagePreprocessor`` (from the image processor's
    configuration; ``fast``: its fast resize) and ``TextTokenizer`` (from the model folder).

    Raises:
        NotReproducible: settings or a tokenizer they do not
            reproduce (the run loads the model with transformers instead).
        KeyError: a configuration without a setting they need.
    """
    return ImagePreprocessor.from_config(image_recipe, fast=fast), models.TextTokenizer.from_folder(Path(folder))


def text_beside_torch(encoder: DualEncoder, backend: Any, head: str | None) -> Any:
    """``backend`` for building the towers: as it is, except that a text tower planned on
    OpenVINO beside torch's image tower (``backends.auto_text_backend``) stays on torch when no
    later run could start without torch anyway: ``wwts search`` / ``embed`` (always loaded with
    transformers), or an image processor / tokenizer that ``numpy_inputs`` does not reproduce
    (SigLIP's SentencePiece, for one). Converting the text tower would then cost its first run
    time and buy nothing."""
    if backend is None or backend.name != "torch" or backend.text_backend == "torch":
        return backend
    why = "wwts search / embed load the model with transformers" if head else None
    if why is None:
        try:
            numpy_inputs(encoder.facts["image_recipe"], encoder.facts.get("weights_folder") or "")
        except (NotReproducible, OSError, ValueError, KeyError) as exc:
            why = describe(exc)
    if why is None:
        return backend
    log.info("label text stays on torch: %s", why)
    return replace(backend, text="")


def save_export(encoder: DualEncoder, backend: Any) -> None:
    """Record ``encoder``'s facts in the export of its converted towers (its backend is OpenVINO or
    ONNX Runtime, or torch with the text tower on OpenVINO; ``backends.save_facts``) so that the
    next run with the same model and backend starts without torch (on torch: until a photo that is not in the embedding
    store needs the image tower). A failure to write it is logged at debug level: the run goes on,
    the next run loads the model with torch again."""
    folder = encoder.facts.get("weights_folder")
    on_torch = backend.name == "torch"  # the torch image tower beside an OpenVINO text tower
    image = None if on_torch else getattr(encoder.image, "manifest", None)
    text = getattr(encoder.text, "manifest", None)
    if not folder or not (text and text.get("fields")) or not (on_torch or (image and image.get("fields"))):
        return
    try:
        save_facts(folder, backend.name, encoder.facts)
    except Exception as exc:  # a cache folder that cannot be written must not stop the run
        log.debug("the export's facts were not saved: %s", describe(exc))
