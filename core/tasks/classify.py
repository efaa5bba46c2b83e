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
from typing import Any, Hashable, Sequence

import torch

from .. import models
from ..backends import ImageEncoder, TextEncoder, build_encoders
from ..config import RunConfig
from ..labels import ensemble, feature_issues, sigmoid_scores, text_issues
from ..errors import ModelLoadError
from ..output import ClassifyResult
from ..store import EmbeddingStore, NullStore, StoredEmbedding
from .base import Task, size_dict
from .stored import collate_stored, image_embeddings, prompt_features, store_parts
from .image_classification import is_image_classifier, load_image_classifier
from .label_setup import build_label_set, build_records, check_text_hygiene, label_run_info, report_issues

log = logging.getLogger(__name__)

#: A tokenizer ``model_max_length`` above this is transformers' "no limit" placeholder (1e30).
_SANE_MAX_LENGTH = 100_000
#: Prompts per text-tower forward pass when the label features are computed (bounds memory for
#: 1,000 labels x several templates).
TEXT_BATCH = 256
#: What the classify task needs from a model: both towers and the learned temperature.
_DUAL_ENCODER_NEEDS = ("get_image_features", "get_text_features", "logit_scale")
_DUAL_ENCODER_HELP = ("zero-shot classification needs a contrastive dual encoder such as Chinese-CLIP, CLIP "
                      "or SigLIP (image and text towers with a learned logit_scale)")


class ClassifyTask(Task):
    """Zero-shot classification of a mini-batch against the run's labels.

    ``prepare``: one image → ``pixel_values (1, 3, S, S)`` float32 (the model's image processor).
    ``collate``: B of those → ``{"pixel_values": (B, 3, S, S)}``.
    ``forward``: → ``(B, L)`` float32 probabilities over the L labels (softmax of the logits).
    ``postprocess``: → B records with ``label``, ``score`` and ``top_k`` (K best, best first).

    The towers run through the backend seam (``image_encoder`` / ``text_encoder``, rebuilt by
    ``setup`` after every move); image embeddings are looked up in ``store`` first when the batch
    carries keys (``NullStore`` by default: every embedding is computed).

    Attributes:
        image_encoder: the ``ImageEncoder`` in use (``TorchImageEncoder`` after ``setup``).
        text_encoder: the ``TextEncoder`` the label prompts were encoded with.
        store: the ``EmbeddingStore`` asked before the image encoder.
    """

    name = "classify"
    record_type = ClassifyResult
    #: Set by the engine (``core.store.StoreOpener``) when the run uses the embedding store.
    store_opener: Any = None
    #: Set by the engine (``core.backends.plan_backend``): the backend of the towers; ``None``: torch.
    backend: Any = None

    def __init__(self, config: RunConfig, model: torch.nn.Module, processor: Any,
                 device: torch.device, dtype: torch.dtype, *, store: EmbeddingStore | None = None) -> None:
        super().__init__(config, model, processor, device, dtype)
        self.store: EmbeddingStore = store if store is not None else NullStore()
        self.image_encoder: ImageEncoder | None = None
        self.text_encoder: TextEncoder | None = None
        self.label_set = build_label_set(config, getattr(model.config, "model_type", "") or "")
        self.labels = self.label_set.shown  # as written in the records (--label-map applied)
        # every label (and the multi-label baseline) in every template; _prompt_labels[i] names prompts[i]'s label
        self.prompts, self._prompt_groups, self._prompt_labels = self.label_set.expanded()
        self.top_k = min(config.top_k, len(self.labels))
        self.text_features: torch.Tensor | None = None  # (L, D), L2-normalised, float32
        self._cpu_text_features: torch.Tensor | None = None

    @property
    def image_processor(self) -> Any:
        """The processor's image part (the processor itself when it is an image processor)."""
        return getattr(self.processor, "image_processor", self.processor)

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
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        limits = []
        tok_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < _SANE_MAX_LENGTH:
            limits.append(tok_max)
        text_config = getattr(self.model.config, "text_config", None) or self.model.config
        positions = getattr(text_config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            limits.append(positions)
        return min(limits) if limits else None

    def _text_inputs(self) -> dict[str, torch.Tensor]:
        """Token ids of the label prompts, truncated to ``text_max_length`` (one warning if any is cut)."""
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        kwargs: dict[str, Any] = {"padding": True, "truncation": True, "return_tensors": "pt"}
        limit = self.text_max_length()
        if limit:
            kwargs["max_length"] = limit
            self._warn_truncated(tokenizer, limit)
        if "siglip" in getattr(self.model.config, "model_type", ""):
            # SigLIP was trained on text padded to 64 tokens (model card, google/siglip-*).
            kwargs.update(padding="max_length", max_length=min(64, limit or 64))
        return dict(tokenizer(self.prompts, **kwargs))

    def _warn_truncated(self, tokenizer: Any, limit: int) -> None:
        lengths = [len(ids) for ids in tokenizer(self.prompts, truncation=False)["input_ids"]]
        cut = list(dict.fromkeys(label for label, n in zip(self._prompt_labels, lengths) if n > limit))
        if cut:
            shown = ", ".join(repr(_shorten(label)) for label in cut[:3])
            if len(cut) > 3:
                shown += f" and {len(cut) - 3} more"
            log.warning("label%s %s %s longer than the %d text tokens the model takes (prompt included): only "
                        "the start is used", "s" if len(cut) > 1 else "", shown, "are" if len(cut) > 1 else "is", limit)

    def int8_modules(self) -> set[str] | None:
        """Only the image side: the label text is encoded once per run, so quantizing the text
        tower saves nothing and costs accuracy (on the benchmark model, int8 text features moved
        probabilities by up to 0.044, the vision tower alone by 0.002)."""
        names = {name for name in ("vision_model", "visual_projection") if hasattr(self.model, name)}
        return names or None

    def setup(self) -> None:
        """Build the encoders for the current device and dtype, and encode the label prompts once:
        ``text_features`` ``(L, D)``, float32, L2-normalised (in float32, whatever the run's dtype).

        After a move to another device the cached features are moved, not recomputed.
        """
        if self.image_encoder is None or self.backend is None or self.backend.name == "torch":
            tokenizer = getattr(self.processor, "tokenizer", self.processor)
            self.image_encoder, self.text_encoder = build_encoders(
                self.model, self.device, self.dtype, self.backend, input_size=self.input_size, prepare=self.prepare,
                tokens=lambda: dict(tokenizer(self.prompts[:2], padding=True, return_tensors="pt")))
        self.use_store()
        if self._cpu_text_features is not None:
            self.text_features = self._cpu_text_features.to(self.device)
            return
        feats = self._label_features()
        self._cpu_text_features = feats.cpu()
        self.text_features = feats

    def _label_features(self) -> torch.Tensor:
        """Encode every prompt (``TEXT_BATCH`` at a time) and ensemble them per label:
        ``(L, D)`` float32 L2-normalised, plus a last row for the neutral baseline of CLIP-style
        ``--multi-label`` scores. Warns (``--strict-labels``: raises ``UsageError``) about labels
        with nearly identical features, unless they come from a built-in vocabulary."""
        # read from the embedding store first; only missing prompts are encoded (and stored)
        prompt_feats = prompt_features(self, self._text_inputs(), self._prompt_labels, TEXT_BATCH)
        feats = ensemble(prompt_feats, self._prompt_groups, self.label_set.groups)
        vocab = self.label_set.vocab
        if vocab is None or not vocab.builtin:
            names = self.label_set.names
            skip = {frozenset((i.first, i.second)) for i in text_issues(names)}
            report_issues(feature_issues(names, feats[:len(names)], skip=skip), self.config.strict_labels)
        return feats

    def prepare(self, image: Any) -> torch.Tensor:
        """One RGB image → ``pixel_values (1, 3, S, S)`` float32 through the model's image processor."""
        return self.image_processor(images=[image], return_tensors="pt")["pixel_values"]

    def use_store(self) -> None:
        """Point ``store`` at the store of the current model key (dtype and backend included),
        when the engine gave the task a ``store_opener``; else leave it as it is."""
        if self.store_opener is not None:
            self.store = self.store_opener.open(getattr(self.model, "name_or_path", None), store_parts(self))

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """B ``(1, 3, S, S)`` tensors → ``{"pixel_values": (B, 3, S, S)}``. Items that are a
        ``core.store.StoredEmbedding`` (read from the store; never decoded) are left out of
        ``pixel_values`` and given in ``"stored"`` (see ``image_features``)."""
        return collate_stored(items, StoredEmbedding)

    def image_features(self, pixel_values: torch.Tensor | None, keys: Sequence[Hashable] | None = None, *,
                       stored: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """``pixel_values (M, 3, S, S)`` → ``(B, D)`` float32 L2-normalised image embeddings.

        With ``keys`` (one per image), embeddings ``store`` holds are taken from it and only the
        others go through ``image_encoder`` (and are then put in the store). ``stored`` (B entries)
        gives the embeddings already read from the store, ``None`` for each image that is a row of
        ``pixel_values`` (without it, B = M). See ``stored.image_embeddings``.
        """
        return image_embeddings(self, pixel_values, keys, stored)

    def forward(self, inputs: dict[str, Any]) -> torch.Tensor:
        """``pixel_values (B, 3, S, S)`` (and optional store ``keys``, B of them) → probabilities
        ``(B, L)`` float32 (rows sum to 1)."""
        feats = self.image_features(inputs["pixel_values"], inputs.get("keys"), stored=inputs.get("stored"))
        # Scoring in float32 outside autocast: CPU autocast would run this matmul and the
        # softmax in bf16 (scores summing to 0.999, and top-1 flips between close labels).
        with torch.autocast(device_type=self.device.type, enabled=False):
            scale = self.model.logit_scale.float().exp()
            logits = scale * feats @ self.text_features.T  # (B, L), (B, L + 1) with the neutral baseline
            return self._scores(logits)

    def _scores(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, L[+1])`` logits → ``(B, L)`` scores: a softmax over the labels, or with
        ``--multi-label`` per-label scores (``core.labels.scoring``: SigLIP's sigmoid with its
        ``logit_bias``; CLIP-style: sigmoid of the logit minus the neutral prompt's)."""
        n = len(self.labels)
        if not self.config.multi_label:
            return logits[:, :n].softmax(dim=-1)
        if self.label_set.neutral is None:  # SigLIP
            return sigmoid_scores(logits, -self.model.logit_bias.float())
        return sigmoid_scores(logits[:, :n], logits[:, n:])

    def postprocess(self, outputs: torch.Tensor, bases: list[ClassifyResult]) -> list[ClassifyResult]:
        """``(B, L)`` scores → B records with ``label``, ``score``, ``top_k`` (and ``labels`` with
        ``--multi-label``; ``--other-label`` when no label reaches ``--min-score``), see
        ``label_setup.build_records``.

        A row holding NaN or infinity (broken weights, an overflow in half precision) becomes an
        ``error`` ``"nonfinite: ..."``: never a NaN score.
        """
        return build_records(outputs, bases, self.labels, self.top_k, self.config, self._nonfinite_error())

    def _nonfinite_error(self) -> str:
        hint = "" if self.dtype == torch.float32 else "; try --dtype float32"
        return f"nonfinite: the model gave NaN or infinite scores for this image{hint}"

    def run_info(self) -> dict[str, Any]:
        """The label settings of this run: ``labels``, ``prompt`` (the template, or the list of
        templates of an ensemble), ``top_k``, ``vocab``, ``multi_label``, ``threshold``..."""
        templates = self.label_set.templates
        prompt = templates[0] if len(templates) == 1 else list(templates)
        return label_run_info(self.config, self.labels, self.top_k, prompt, self.label_set.vocab)


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


def _shorten(text: str, width: int = 40) -> str:
    """``text`` cut to ``width`` characters with ``…`` (for naming long labels in messages)."""
    return text if len(text) <= width else text[:width - 1] + "…"
