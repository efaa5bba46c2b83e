"""Image captioning: one caption per image, a whole mini-batch per ``generate`` call.

How each model family is prompted and how the prompt is taken back off the output is in
``caption_families`` (detected from the model's config). What is left after slicing is decoded
with ``skip_special_tokens=True``, whitespace runs (newlines included) become one space, and the
result is stripped.

Generation is deterministic (``do_sample=False``): greedy with ``num_beams=1``, beam search above.

Every family's processor sees the whole mini-batch (chat prompts are padded together), so
``prepare`` hands the image on as it is and ``collate`` runs the processor.

Chat models on the CPU would otherwise see photos at full resolution (Qwen2-VL allows ~1 MP,
i.e. 1280 visual tokens), so their image side is bounded: pixel-budget processors (Qwen2-VL,
Qwen2.5-VL, Qwen3-VL: ``size={"shortest_edge": min_pixels, "longest_edge": max_pixels}``) get
``max_pixels = CHAT_MAX_PIXELS`` (448 x 448: 256 visual tokens at Qwen2-VL's 28 px per token, 196 at
Qwen3-VL's 32 px; the Qwen2-VL model card shows this ``min_pixels`` / ``max_pixels`` knob for
trading speed against detail), and tiling processors (SmolVLM / Idefics3) get
``do_image_splitting=False`` (one tile of ``max_image_size`` instead of up to 17).
``RunConfig.extra["max_pixels"]`` overrides the pixel budget.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any, NamedTuple

import torch

from .. import backends, models
from ..arrays import dtype_name
from ..config import RunConfig
from ..errors import ModelLoadError, UsageError
from ..output import CaptionResult
from ..store import StoredCaption
from .task import Task, size_dict
from .caption_generate import blip_greedy
from .caption_store import open_caption_store
from .caption_families import (CHAT_MAX_PIXELS, CHAT_PROMPTS, FAMILIES, FAMILY_NAMES, detect_family,
                               is_encoder_decoder, processor_class, resolve_prompt)

__all__ = ["CHAT_MAX_PIXELS", "CHAT_PROMPTS", "CaptionTask", "detect_family", "load_task",
           "resolve_prompt"]

log = logging.getLogger(__name__)


class Generated(NamedTuple):
    """``CaptionTask.forward``'s output (see there)."""

    sequences: torch.Tensor | None
    prompt_length: int
    stored: list[str | None] | None = None
    keys: list[str | None] | None = None


def _load_dtype(family: str, device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """Weights dtype at load time: float32 (the engine autocasts), except chat models in half precision.

    Chat models are billions of parameters stored in bfloat16: loading them in the run's
    bfloat16 / float16 halves their memory (8.8 -> 4.4 GB for 2B parameters) and spares autocast
    a cast of every weight per batch. float16 is kept off the CPU.
    """
    if family == "chat" and (dtype == torch.bfloat16 or (dtype == torch.float16 and device.type != "cpu")):
        return dtype
    return torch.float32


def load_task(config: RunConfig, device: torch.device, dtype: torch.dtype) -> CaptionTask:
    """Load the captioning model named by ``config.model`` (or the default for ``config.lang``).

    The config is read first to pick the family (no weights are read for a model that cannot
    caption, and a bad ``--prompt`` fails before loading). The model is loaded on the CPU, in
    float32 except for chat models run in bfloat16 / float16 (see ``_load_dtype``); the engine then
    calls ``task.to(device, dtype)``.

    Returns:
        a ``CaptionTask``.

    Raises:
        ModelLoadError: the model cannot be loaded or is not a captioning model (see ``detect_family``).
        UsageError: a prompt the family does not take (see ``resolve_prompt``).
    """
    from transformers import AutoModelForImageTextToText

    name = models.model_for("caption", config.lang, config.model)
    model_config = models.load_config(name, trust_remote_code=config.trust_remote_code)
    family = detect_family(model_config)
    prompt = resolve_prompt(family, config)
    if config.lang == "zh" and family != "chat":
        log.warning("--lang zh: %s captions in its own language (a %s caption model takes no instruction); "
                    "use a chat model such as %s for Chinese (the default with --lang zh and no --model)",
                    name, FAMILY_NAMES.get(family, family), models.default_model("caption", "zh"))
    model, processor = models.load(
        name,
        model_class=AutoModelForImageTextToText,
        processor_class=processor_class(family, model_config),
        trust_remote_code=config.trust_remote_code,
        model_kwargs={"dtype": _load_dtype(family, device, dtype)},
    )
    return CaptionTask(config, model, processor, device, dtype, family=family, prompt=prompt)


# --- the task --------------------------------------------------------------------------------


class CaptionTask(Task):
    """Caption images with any supported family (see the module docstring).

    Attributes:
        family: family name (``blip``, ``blip-2``, ``git``, ``vision-encoder-decoder``,
            ``florence2``, ``chat``).
        prompt: the prompt in use (``None`` for none).
        generate_kwargs: the arguments of every ``generate`` call.
    """

    name = "caption"
    record_type = CaptionResult
    #: The run's ``backends.BackendChoice`` (set by the engine before ``to``); ``None``: torch.
    backend: Any = None

    def __init__(self, config: RunConfig, model: torch.nn.Module, processor: Any, device: torch.device,
                 dtype: torch.dtype, *, family: str, prompt: str | None) -> None:
        super().__init__(config, model, processor, device, dtype)
        if family not in FAMILIES:
            raise ValueError(f"unknown caption family {family!r}")
        self.family = family
        self.prompt = prompt
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.image_processor = getattr(processor, "image_processor", None)
        self.decoder_only = FAMILIES[family].decoder_only and not is_encoder_decoder(model.config)
        if self.decoder_only and family != "blip":
            self.tokenizer.padding_side = "left"
        self._image_kwargs = self._chat_image_kwargs() if family == "chat" else {}
        self._chat_text = self._build_chat_text() if family == "chat" else None
        self._prefix_ids = self._build_git_prefix() if family == "git" else None
        self.generate_kwargs = self._build_generate_kwargs()
        c = config
        #: BLIP greedy runs wwts' shrinking-batch loop (``caption_generate``); the rest ``generate``.
        self.own_greedy = (family == "blip" and c.num_beams == 1 and c.min_new_tokens is None
                           and c.repetition_penalty is None)
        #: The run's ``store.CaptionStore`` (opened by ``setup``; ``None``: ``--no-store``, or the
        #: weights cannot be identified).
        self.store: Any = None
        self._store_opened = False
        #: BLIP's towers on OpenVINO (``backends.build_caption_runtime``), made by ``setup``.
        self.runtime: Any = None

    def setup(self) -> None:
        """Open the caption store (once) and, on ``--backend openvino`` or ``onnxruntime``, convert or
        load BLIP's towers.

        Raises:
            UsageError: such a backend for another family than BLIP, or with beams,
                ``--min-new-tokens`` or ``--repetition-penalty`` (those run on torch).
        """
        on = self.backend.name if self.backend is not None else "torch"
        if on == "openvino" and not self.own_greedy and self.backend.reason.startswith("auto"):
            on = "torch"  # --backend auto: what OpenVINO does not run stays on torch
            self.backend = replace(self.backend, name="torch", reason="auto: PyTorch runs this caption family "
                                   "or setting (OpenVINO runs BLIP's greedy captions)")
        if not self._store_opened:
            self.store, self._store_opened = open_caption_store(self.config, on, dtype_name(self.dtype)), True
        if on not in ("openvino", "onnxruntime") or self.runtime is not None:
            return
        if not self.own_greedy:
            raise UsageError(f"--backend {on} runs BLIP's greedy captions only; other caption families, "
                             "--num-beams, --min-new-tokens and --repetition-penalty run on --backend torch")
        self.runtime = backends.build_caption_runtime(
            self.model, backends.model_folder(self.model), self.input_size or 384,
            device=self.backend.device, dtype=self.backend.dtype, threads=self.backend.threads,
            int8=self.backend.int8, runtime=on, providers=self.backend.providers)

    # -- set-up helpers

    def _chat_image_kwargs(self) -> dict[str, Any]:
        ip = self.image_processor
        if ip is None:
            return {}
        size = size_dict(getattr(ip, "size", None))
        if {"shortest_edge", "longest_edge"} <= size.keys() and hasattr(ip, "merge_size") and hasattr(ip, "patch_size"):
            max_pixels = int(self.config.extra.get("max_pixels", CHAT_MAX_PIXELS))
            longest = min(int(size["longest_edge"]), max_pixels)
            return {"size": {"shortest_edge": min(int(size["shortest_edge"]), longest), "longest_edge": longest}}
        if getattr(ip, "do_image_splitting", False):
            return {"do_image_splitting": False}
        return {}

    def _build_chat_text(self) -> str:
        if not getattr(self.processor, "chat_template", None):
            raise ModelLoadError(f"model type {self.model.config.model_type!r} has no chat template, so wwts "
                                 "cannot caption with it (supported: BLIP, BLIP-2, GIT, VisionEncoderDecoder, "
                                 "Florence-2 and chat vision-language models)")
        content: list[dict[str, str]] = [{"type": "image"}]
        if self.prompt:
            content.append({"type": "text", "text": self.prompt})
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _build_git_prefix(self) -> list[int]:
        # transformers' GIT docs: generation continues [CLS] + the prompt's tokens (no [SEP]).
        ids = [self.tokenizer.cls_token_id]
        if self.prompt:
            ids += self.tokenizer(self.prompt, add_special_tokens=False)["input_ids"]
        return ids

    def _build_generate_kwargs(self) -> dict[str, Any]:
        c = self.config
        kwargs: dict[str, Any] = {"max_new_tokens": c.max_new_tokens, "num_beams": c.num_beams, "do_sample": False}
        if c.min_new_tokens is not None:
            kwargs["min_new_tokens"] = c.min_new_tokens
        if c.repetition_penalty is not None:
            kwargs["repetition_penalty"] = c.repetition_penalty
        # BLIP's generate passes pad/eos to its decoder itself (a second pad_token_id would be a
        # duplicate keyword); other models without a pad id would warn on every batch.
        if self.family != "blip" and getattr(self.model.generation_config, "pad_token_id", None) is None:
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
            if pad is not None:
                kwargs["pad_token_id"] = pad
        return kwargs

    # -- Task interface

    @property
    def input_size(self) -> int | None:
        """Nominal input side in pixels (BLIP 384, ViT 224, Florence-2 768, Qwen-VL sqrt(max_pixels)).

        ``None`` when the image processor does not say.
        """
        size = self._image_kwargs.get("size")
        if size:  # pixel budget of a Qwen-VL style processor
            return math.isqrt(int(size["longest_edge"]))
        ip = self.image_processor
        if ip is None:
            return None
        if self._image_kwargs.get("do_image_splitting") is False and getattr(ip, "max_image_size", None):
            return int(size_dict(ip.max_image_size)["longest_edge"])
        candidates = [getattr(ip, "crop_size", None)] if getattr(ip, "do_center_crop", False) else []
        candidates.append(getattr(ip, "size", None))
        for value in candidates:
            value = size_dict(value)
            for key in ("height", "shortest_edge", "longest_edge"):
                if value.get(key):
                    return int(value[key])
        return None

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move the model; float16 weights become float32 on the CPU (half matmuls are slow there)."""
        if device.type == "cpu" and next(self.model.parameters()).dtype == torch.float16:
            self.model.to(torch.float32)
        super().to(device, dtype)

    def prepare(self, image: Any) -> Any:
        """The image itself: every family's processor runs on the whole mini-batch in ``collate``."""
        return image

    def collate(self, items: list) -> dict[str, Any]:
        """B RGB PIL images (or ``StoredCaption`` s read from the caption store before decoding) →
        CPU tensors for ``generate`` (``_collate_images``), plus ``stored``: B entries, the stored
        caption or ``None`` for an image given as pixels (only when some item was stored)."""
        if not items:
            raise ValueError("collate needs at least one image")
        images = [item for item in items if not isinstance(item, StoredCaption)]
        inputs: dict[str, Any] = self._collate_images(images) if images else {}
        if len(images) < len(items):
            inputs["stored"] = [item.text if isinstance(item, StoredCaption) else None for item in items]
        return inputs

    def _collate_images(self, images: list) -> dict[str, torch.Tensor]:
        """B RGB PIL images → CPU tensors for ``generate``.

        Returns:
            ``pixel_values`` (``(B, 3, H, W)``, or Qwen-VL's ``(patches, C*T*P*P)`` with
            ``image_grid_thw (B, 3)``) plus, for prompted families, ``input_ids`` and
            ``attention_mask`` ``(B, L)`` (chat prompts left padded to the longest row).
        """
        n = len(images)
        if self.family == "chat":
            # One image per sample, nested so that processors which group images by sample
            # (SmolVLM / Idefics3) see n samples of one image, not one sample of n.
            inputs = self.processor(text=[self._chat_text] * n, images=[[im] for im in images], padding=True,
                                    return_tensors="pt", **self._image_kwargs)
        elif self.family == "git":
            inputs = self.processor(images=images, return_tensors="pt")
            ids = torch.tensor([self._prefix_ids] * n, dtype=torch.long)
            inputs = {"pixel_values": inputs["pixel_values"], "input_ids": ids, "attention_mask": torch.ones_like(ids)}
        elif self.family == "vision-encoder-decoder":
            inputs = self.processor(images, return_tensors="pt")
        elif self.family == "blip" and not self.prompt:
            inputs = self.processor(images=images, return_tensors="pt")
        else:  # blip with a prefix, blip-2, florence2: the same text for every image
            inputs = self.processor(images=images, text=[self.prompt or ""] * n, padding=True, return_tensors="pt")
        return {k: v for k, v in dict(inputs).items() if isinstance(v, torch.Tensor)}

    def forward(self, inputs: dict[str, Any]) -> Generated:
        """Captions the batch's images given as pixels: BLIP greedy runs ``caption_generate.blip_greedy``
        (a finished row leaves the batch), every other case one ``generate`` call for the batch.

        Floating inputs are cast to the weights' dtype when the model was loaded in half precision.
        ``inputs["stored"]`` (captions read from the store) and ``inputs["keys"]`` (content hashes)
        are handed on to ``postprocess``.

        Returns:
            ``Generated``: ``sequences (M, prompt_length + new tokens)`` token ids (padded with the
            pad id after each row's end-of-sequence token; ``None`` when M = 0), still on the
            model's device, how many leading columns repeat the prompt (or the decoder start
            token), and the ``stored`` / ``keys`` lists.
        """
        inputs = dict(inputs)
        stored, keys = inputs.pop("stored", None), inputs.pop("keys", None)
        if "pixel_values" not in inputs:
            return Generated(None, 0, stored, keys)
        weight_dtype = next(self.model.parameters()).dtype
        for key, value in inputs.items():
            if value.is_floating_point() and value.dtype != weight_dtype:
                inputs[key] = value.to(weight_dtype)
        input_ids = inputs.get("input_ids")
        if self.family == "blip":
            # BLIP's generate overwrites input_ids[:, 0] with [DEC] and drops the final [SEP]: its
            # output repeats [DEC] + prefix, i.e. input length - 1 tokens (1 without a prefix).
            if input_ids is not None:
                inputs["input_ids"] = input_ids = input_ids.clone()
            prompt_length = input_ids.shape[1] - 1 if input_ids is not None else 1
        elif self.decoder_only:
            prompt_length = input_ids.shape[1] if input_ids is not None else 0
        else:
            prompt_length = 1  # encoder-decoder: the decoder start token
        if self.runtime is not None:
            ids = inputs.get("input_ids")
            sequences = torch.from_numpy(self.runtime.generate(inputs["pixel_values"].float().numpy(),
                                                               None if ids is None else ids.numpy(),
                                                               max_new_tokens=self.config.max_new_tokens))
        elif self.own_greedy:
            sequences = blip_greedy(self.model, **inputs, max_new_tokens=self.config.max_new_tokens)
        else:
            sequences = self.model.generate(**inputs, **self.generate_kwargs)
        if not isinstance(sequences, torch.Tensor):  # a generation_config with return_dict_in_generate
            sequences = sequences.sequences
        return Generated(sequences, prompt_length, stored, keys)

    def postprocess(self, outputs: Generated | tuple, bases: list[CaptionResult]) -> list[CaptionResult]:
        """Decode the new tokens: each base record with its ``caption``, in input order; the new
        captions go in the caption store (when the run has one and the images their keys).

        The prompt and special tokens are left out; whitespace runs become one space; stripped.
        """
        outputs = Generated(*outputs)
        texts: list[str] = []
        if outputs.sequences is not None:
            new_tokens = outputs.sequences[:, outputs.prompt_length:].cpu()
            texts = [" ".join(t.split()) for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        fresh = iter(texts)
        captions = [s if s is not None else next(fresh) for s in outputs.stored] if outputs.stored else texts
        if self.store is not None and outputs.keys is not None:
            self.store.put({key: text for key, text, s in zip(outputs.keys, captions, outputs.stored or [None] * len(captions))
                            if key is not None and s is None})
        return [replace(base, caption=text) for base, text in zip(bases, captions)]

    def run_info(self) -> dict[str, Any]:
        """``{"prompt", "max_new_tokens", "num_beams", "family", "store"}`` of this run (``store``:
        the caption store's file, ``None`` without one)."""
        return {"prompt": self.prompt, "max_new_tokens": self.config.max_new_tokens,
                "num_beams": self.config.num_beams, "family": self.family,
                "store": str(self.store.path) if self.store is not None else None}
