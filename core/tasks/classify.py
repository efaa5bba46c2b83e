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
from dataclasses import replace
from typing import Any, Hashable, Sequence

import torch

from .. import models
from ..backends import ImageEncoder, TextEncoder, TorchImageEncoder, TorchTextEncoder
from ..config import RunConfig, fill_prompt
from ..errors import ModelLoadError
from ..output import ClassifyResult, LabelScore
from ..store import EmbeddingStore, NullStore
from .base import Task, size_dict

log = logging.getLogger(__name__)

#: A tokenizer ``model_max_length`` above this is transformers' "no limit" placeholder (1e30).
_SANE_MAX_LENGTH = 100_000
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

    def __init__(self, config: RunConfig, model: torch.nn.Module, processor: Any,
                 device: torch.device, dtype: torch.dtype, *, store: EmbeddingStore | None = None) -> None:
        super().__init__(config, model, processor, device, dtype)
        self.store: EmbeddingStore = store if store is not None else NullStore()
        self.image_encoder: ImageEncoder | None = None
        self.text_encoder: TextEncoder | None = None
        self.labels = list(config.labels)
        self.prompts = [fill_prompt(config.prompt_template, label) for label in self.labels]
        self.top_k = config.effective_top_k
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
        cut = [label for label, n in zip(self.labels, lengths) if n > limit]
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
        self.image_encoder = TorchImageEncoder(self.model, self.device, self.dtype)
        self.text_encoder = TorchTextEncoder(self.model, self.device, torch.float32)
        if self._cpu_text_features is not None:
            self.text_features = self._cpu_text_features.to(self.device)
            return
        feats = self.text_encoder.encode(self._text_inputs())
        self._cpu_text_features = feats.cpu()
        self.text_features = feats

    def prepare(self, image: Any) -> torch.Tensor:
        """One RGB image → ``pixel_values (1, 3, S, S)`` float32 through the model's image processor."""
        return self.image_processor(images=[image], return_tensors="pt")["pixel_values"]

    def collate(self, items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """B ``(1, 3, S, S)`` tensors → ``{"pixel_values": (B, 3, S, S)}``."""
        return {"pixel_values": torch.cat(items)}

    def image_features(self, pixel_values: torch.Tensor, keys: Sequence[Hashable] | None = None) -> torch.Tensor:
        """``pixel_values (B, 3, S, S)`` → ``(B, D)`` float32 L2-normalised image embeddings.

        With ``keys`` (one per image), embeddings ``store`` holds are taken from it and only the
        others go through ``image_encoder`` (and are then put in the store).
        """
        if keys is None:
            return self.image_encoder.encode(pixel_values)
        found = self.store.get(keys)
        missing = [i for i, key in enumerate(keys) if key not in found]
        if missing:
            fresh = self.image_encoder.encode(pixel_values if len(missing) == len(keys) else pixel_values[missing])
            self.store.put({keys[i]: row.cpu() for i, row in zip(missing, fresh)})
            found = {**found, **{keys[i]: row for i, row in zip(missing, fresh)}}
        return torch.stack([found[key].to(self.device, torch.float32) for key in keys])

    def forward(self, inputs: dict[str, Any]) -> torch.Tensor:
        """``pixel_values (B, 3, S, S)`` (and optional store ``keys``, B of them) → probabilities
        ``(B, L)`` float32 (rows sum to 1)."""
        feats = self.image_features(inputs["pixel_values"], inputs.get("keys"))
        # Scoring in float32 outside autocast: CPU autocast would run this matmul and the
        # softmax in bf16 (scores summing to 0.999, and top-1 flips between close labels).
        with torch.autocast(device_type=self.device.type, enabled=False):
            scale = self.model.logit_scale.float().exp()
            logits = scale * feats @ self.text_features.T  # (B, L)
            return logits.softmax(dim=-1)

    def postprocess(self, outputs: torch.Tensor, bases: list[ClassifyResult]) -> list[ClassifyResult]:
        """``(B, L)`` probabilities → B records with ``label``, ``score``, ``top_k``.

        A row holding NaN or infinity (broken weights, an overflow in half precision) becomes an
        ``error`` ``"nonfinite: ..."``: never a NaN score.
        """
        probs = outputs.float().cpu()
        finite = torch.isfinite(probs).all(dim=-1).tolist()
        values, indices = probs.topk(self.top_k, dim=-1)
        records: list[ClassifyResult] = []
        for base, ok, vals, idxs in zip(bases, finite, values.tolist(), indices.tolist()):
            if not ok:
                records.append(replace(base, error=self._nonfinite_error()))
                continue
            top = [LabelScore(self.labels[i], float(v)) for v, i in zip(vals, idxs)]
            records.append(replace(base, label=top[0].label, score=top[0].score, top_k=top))
        return records

    def _nonfinite_error(self) -> str:
        hint = "" if self.dtype == torch.float32 else "; try --dtype float32"
        return f"nonfinite: the model gave NaN or infinite scores for this image{hint}"

    def run_info(self) -> dict[str, Any]:
        """``{"labels", "prompt", "top_k"}`` of this run."""
        return {"labels": self.labels, "prompt": self.config.prompt_template, "top_k": self.top_k}


def load_task(config: RunConfig, device: torch.device, dtype: torch.dtype) -> ClassifyTask:
    """Load the model and processor named by ``config.model`` (or the default) for classify.

    Raises:
        ModelLoadError: the model cannot be loaded, or it is not a contrastive dual encoder: its
            config names another architecture (``check_architecture``, before the weights are
            read), or the loaded model lacks ``get_image_features`` / ``get_text_features`` /
            ``logit_scale``.
    """
    name = models.model_for("classify", config.lang, config.model)
    check_architecture(name, models.load_config(name, trust_remote_code=config.trust_remote_code))
    # float32 weights whatever the checkpoint stores (transformers 5 keeps the checkpoint's dtype
    # by default); bf16/fp16 come from autocast, so norms and softmax stay float32.
    model, processor = models.load(name, trust_remote_code=config.trust_remote_code,
                                   model_kwargs={"dtype": torch.float32})
    missing = [need for need in _DUAL_ENCODER_NEEDS if not hasattr(model, need)]
    if missing:
        raise ModelLoadError(f"model {name!r} ({type(model).__name__}) has no {', '.join(missing)}: "
                             f"{_DUAL_ENCODER_HELP}")
    return ClassifyTask(config, model, processor, device, dtype)


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
