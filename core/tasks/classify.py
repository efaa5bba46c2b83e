"""Zero-shot image classification with CLIP-style models (Chinese-CLIP, CLIP, SigLIP).

Scoring follows Chinese-CLIP's zero-shot recipe (Yang et al. 2022, arXiv:2211.01335; code
OFA-Sys/Chinese-CLIP, cn_clip/eval/zeroshot_evaluation.py): every label is put into a prompt
template, the text features are computed ONCE per run and L2-normalised, and each image's
L2-normalised features are scored against them as ``logit_scale.exp() * image @ text.T`` followed
by a softmax over the labels. Building the classifier once and reusing it for every batch is
open_clip's ``build_zero_shot_classifier`` pattern (src/open_clip/zero_shot_classifier.py).

SigLIP is trained with a sigmoid loss; wwts still reports a softmax over the labels (its
``logit_bias`` is the same for every label, so the ranking is the one SigLIP gives), which keeps
the scores of all models comparable and summing to 1.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .. import models
from ..backends import build_towers
from ..config import RunConfig
from ..errors import ModelLoadError
from ..store import EmbeddingStore, StoredEmbedding
from .base import Task, size_dict
from .bundles import save_bundle, text_beside_torch
from .image_classification import is_image_classifier, load_image_classifier
from .label_setup import check_text_hygiene
from .stored import collate_stored, processor_recipe
from .zero_shot import ZeroShotTask

log = logging.getLogger(__name__)

#: A tokenizer ``model_max_length`` above this is transformers' "no limit" placeholder (1e30).
_SANE_MAX_LENGTH = 100_000
#: What the classify task needs from a model: both towers and the learned temperature.
_DUAL_ENCODER_NEEDS = ("get_image_features", "get_text_features", "logit_scale")
_DUAL_ENCODER_HELP = ("zero-shot classification needs a contrastive dual encoder such as Chinese-CLIP, CLIP "
                      "or SigLIP (image and text towers with a learned logit_scale)")


class ClassifyTask(ZeroShotTask):
    """Zero-shot classification with a dual encoder loaded by transformers (``zero_shot.ZeroShotTask``
    scores and writes the records).

    ``prepare``: one image → ``pixel_values (1, 3, S, S)`` float32 (the model's image processor).
    ``collate``: B of those → ``{"pixel_values": (B, 3, S, S)}``.
    ``forward``: → ``(B, L)`` float32 logits; ``postprocess``: → B records (``label``, ``score``, ``top_k``).

    The towers run through the backend seam (``image_encoder`` / ``text_encoder``, built by
    ``setup``: torch on the run's device, or a conversion for OpenVINO / ONNX Runtime, after which
    a bundle is saved so later runs need neither torch nor transformers, see
    ``compiled.CompiledClassifyTask``); image embeddings are looked up in ``store`` first when the
    batch carries keys (``NullStore`` by default: every embedding is computed).
    """

    def __init__(self, config: RunConfig, model: torch.nn.Module, processor: Any,
                 device: torch.device, dtype: torch.dtype, *, store: EmbeddingStore | None = None) -> None:
        super().__init__(config, model, processor, device, dtype,
                         model_type=getattr(model.config, "model_type", "") or "", store=store)

    @property
    def image_recipe(self) -> dict[str, Any]:
        """The image processor's configuration (``stored.processor_recipe``): part of the store key."""
        return processor_recipe(self.image_processor)

    @property
    def weights_folder(self) -> str | None:
        """The folder transformers loaded the weights from (``name_or_path``)."""
        return getattr(self.model, "name_or_path", None)

    @property
    def image_processor(self) -> Any:
        """The processor's image part (the processor itself when it is an image processor)."""
        return getattr(self.processor, "image_processor", self.processor)

    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer (the processor itself when it is a tokenizer)."""
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def input_size(self) -> int | None:
        """Side in pixels of the model's input: the image processor's crop / size, else the
        vision config's ``image_size``."""
        ip = self.image_processor
        for attr in ("crop_size", "size"):
            size = size_dict(getattr(ip, attr, None))
            for key in ("height", "shortest_edge"):
                if size.get(key):
                    return int(size[key])
        vision = getattr(self.model.config, "vision_config", None)
        return getattr(vision, "image_size", None)

    def text_max_length(self) -> int | None:
        """Most tokens the text tower takes: the tokenizer's ``model_max_length`` when it is a
        real limit, capped by the text config's ``max_position_embeddings``; ``None`` if neither says."""
        limits = []
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < _SANE_MAX_LENGTH:
            limits.append(tok_max)
        text_config = getattr(self.model.config, "text_config", None) or self.model.config
        positions = getattr(text_config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            limits.append(positions)
        return min(limits) if limits else None

    def tokenize(self, texts: list[str], max_length: int | None, pad_to_max_length: bool) -> dict[str, Any]:
        """transformers' tokenizer: ``input_ids (N, T)``... as torch tensors."""
        kwargs: dict[str, Any] = {"padding": "max_length" if pad_to_max_length else True, "truncation": True,
                                  "return_tensors": "pt"}
        if max_length:
            kwargs["max_length"] = max_length
        return dict(self.tokenizer(texts, **kwargs))

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Token counts without truncation (transformers' tokenizer)."""
        return [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]]

    @property
    def logit_scale(self) -> float:
        """``logit_scale.exp()`` of the loaded model."""
        return float(self.model.logit_scale.detach().float().exp())

    @property
    def logit_bias(self) -> float | None:
        """SigLIP's learned ``logit_bias`` (its sigmoid scores); ``None`` for CLIP-style models."""
        if self.label_set.neutral is not None or getattr(self.model, "logit_bias", None) is None:
            return None
        return float(self.model.logit_bias.detach().float().reshape(-1)[0])

    def int8_modules(self) -> set[str] | None:
        """Only the image side: the label text is encoded once per run, so quantizing the text
        tower saves nothing and costs accuracy (on the benchmark model, int8 text features moved
        probabilities by up to 0.044, the vision tower alone by 0.002)."""
        names = {name for name in ("vision_model", "visual_projection") if hasattr(self.model, name)}
        return names or None

    def setup(self) -> None:
        """Build the encoders for the current device and dtype, and encode the label prompts once:
        ``text_features`` ``(L, D)``, float32, L2-normalised (in float32, whatever the run's dtype),
        a NumPy array: scoring runs on the CPU, after the image tower.

        On OpenVINO / ONNX Runtime, and on torch with the text tower on OpenVINO
        (``bundles.text_beside_torch``), the bundle of the conversions is saved (``save_bundle``).
        After a move to another device the features are kept, not recomputed.
        """
        if self.image_encoder is None or self.backend is None or self.backend.name == "torch":
            backend = text_beside_torch(self)
            self.image_encoder, self.text_encoder = build_towers(
                self.model, self.device, self.dtype, backend, input_size=self.input_size, prepare=self.prepare,
                tokens=lambda: dict(self.tokenizer(self.prompts[:2], padding=True, return_tensors="pt")))
            if backend is not None and backend.text_backend != "torch":
                save_bundle(self)
                if getattr(self.text_encoder, "backend", "torch") != "torch":
                    drop_text_tower(self.model)
        self.use_store()
        if self.text_features is None:
            self.text_features = self._label_features()

    def prepare(self, image: Any) -> torch.Tensor:
        """One RGB image → ``pixel_values (1, 3, S, S)`` float32 through the model's image processor."""
        return self.image_processor(images=[image], return_tensors="pt")["pixel_values"]

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """B ``(1, 3, S, S)`` tensors → ``{"pixel_values": (B, 3, S, S)}``. Items that are a
        ``core.store.StoredEmbedding`` (read from the store; never decoded) are left out of
        ``pixel_values`` and given in ``"stored"`` (see ``image_features``)."""
        return collate_stored(items, StoredEmbedding, torch.cat)


def drop_text_tower(model: torch.nn.Module) -> None:
    """Free a dual encoder's torch text tower (``text_model``, ``text_projection``) where another
    runtime runs it (OpenVINO, converted already): ~400 MB of float32 BERT-base weights that would
    otherwise sit beside that runtime's copy. ``get_text_features`` no longer works afterwards."""
    for name in ("text_model", "text_projection"):
        if isinstance(getattr(model, name, None), torch.nn.Module):
            setattr(model, name, None)


def load_task(config: RunConfig, device: torch.device, dtype: torch.dtype) -> Task:
    """Load the model and processor named by ``config.model`` (or the default) for classify: a
    ``ClassifyTask`` for a dual encoder, an ``ImageClassificationTask`` for a closed-set
    classifier (``AutoModelForImageClassification``, see ``image_classification.py``).

    Raises:
        ModelLoadError: the model cannot be loaded, or it is not a contrastive dual encoder: its
            config names another architecture (``check_architecture``, before the weights are
            read), or the loaded model lacks ``get_image_features`` / ``get_text_features`` /
            ``logit_scale``.
        UsageError: an unknown ``--vocab``; with ``--strict-labels``, duplicate or contained
            labels (before the weights load) or nearly identical label features (after).
    """
    name = models.model_for("classify", config.lang, config.model)
    model_config = models.load_config(name, trust_remote_code=config.trust_remote_code)
    if is_image_classifier(model_config):
        return load_image_classifier(config, name, device, dtype)
    check_architecture(name, model_config)
    check_text_hygiene(config)  # before the weights load: --strict-labels stops here
    model, processor = load_dual_encoder(config, name)
    return ClassifyTask(config, model, processor, device, dtype)


def load_dual_encoder(config: RunConfig, name: str) -> tuple[torch.nn.Module, Any]:
    """``(model, processor)`` of the contrastive dual encoder ``name``, weights in float32 on the
    CPU whatever the checkpoint stores (transformers 5 keeps the checkpoint's dtype by default;
    bf16/fp16 come from autocast, so norms and softmax stay float32). The caller has checked the
    config's architecture (``check_architecture``).

    Raises:
        ModelLoadError: the model cannot be loaded, or it lacks ``get_image_features`` /
            ``get_text_features`` / ``logit_scale``.
    """
    model, processor = models.load(name, trust_remote_code=config.trust_remote_code,
                                   model_kwargs={"dtype": torch.float32})
    missing = [need for need in _DUAL_ENCODER_NEEDS if not hasattr(model, need)]
    if missing:
        raise ModelLoadError(f"model {name!r} ({type(model).__name__}) has no {', '.join(missing)}: "
                             f"{_DUAL_ENCODER_HELP}")
    return model, processor


def check_architecture(name: str, model_config: Any) -> None:
    """Refuse, before any weights are read, a checkpoint whose ``config.architectures`` names a
    transformers class that is not a dual encoder (no ``get_image_features`` and
    ``get_text_features``): e.g. ``BlipForConditionalGeneration`` (a captioner, which ``AutoModel``
    would load as a ``BlipModel`` with random projection heads, scoring NaN) or
    ``ViTForImageClassification``. Classes transformers does not know (remote code) pass here and
    are checked on the loaded model.

    Raises:
        ModelLoadError: the checkpoint's architecture is not a dual encoder (the message says what
            it is and, for a captioning model, points at ``wwts caption``).
    """
    import transformers

    for arch in getattr(model_config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is None or all(hasattr(cls, m) for m in _DUAL_ENCODER_NEEDS[:2]):
            continue
        hint = ""
        if arch.endswith(("ForConditionalGeneration", "ForCausalLM", "ForImageTextToText", "EncoderDecoderModel")):
            hint = "; to describe images with it use `wwts caption`"
        raise ModelLoadError(f"model {name!r} is a {arch} (model type {getattr(model_config, 'model_type', '?')}): "
                             f"{_DUAL_ENCODER_HELP}{hint}")
