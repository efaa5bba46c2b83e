"""Caption model families: how each is detected, prompted and given a processor.

The family is read from the model's config (``model_type`` / ``architectures``), never from its
name, and decides how the prompt is fed and how it is taken back off the output:

=========================  ============================  =============================================
family                     prompt                        prompt removal
=========================  ============================  =============================================
``blip``                   optional text prefix (model   output repeats ``[DEC] prefix``: sliced off
                           card: ``a photography of``)
``blip-2``                 optional text prefix          decoder-only LM: input ids sliced off;
                                                         T5 LM: decoder start token sliced off
``git``                    optional text prefix          output repeats ``[CLS] prefix``: sliced off
``vision-encoder-decoder`` none (``--prompt`` refused)   decoder start token sliced off
``florence2``              task token, ``<CAPTION>``     decoder start token sliced off
``chat``                   user message (image + text)   input ids (left padded) sliced off
                           via the chat template,
                           ``add_generation_prompt``
=========================  ============================  =============================================

Every family loads with ``AutoModelForImageTextToText`` (transformers 5 maps ``blip``, ``blip-2``,
``git``, ``florence2`` and ``vision-encoder-decoder`` to their captioning classes there); any other
``model_type`` of that auto mapping is taken for a chat vision-language model (Qwen2-VL,
Qwen2.5-VL, Qwen3-VL, SmolVLM / Idefics3, LLaVA...) and must come with a chat template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import RunConfig
from ..errors import ModelLoadError, UsageError

#: Default pixel budget of chat models' images: 448 x 448 (see the module docstring).
CHAT_MAX_PIXELS = 448 * 448
#: Default chat prompts by ``--lang``.
CHAT_PROMPTS = {"en": "Describe this image in one sentence.", "zh": "用一句话描述这张图片。"}
#: Florence-2's short-caption task token (model card: ``<CAPTION>``, ``<DETAILED_CAPTION>``,
#: ``<MORE_DETAILED_CAPTION>``); the short one fits the default 30 new tokens.
FLORENCE2_DEFAULT_PROMPT = "<CAPTION>"


@dataclass(frozen=True)
class CaptionFamily:
    """How one family of captioning models is prompted and its output cleaned.

    Attributes:
        prompt_style: ``"prefix"`` (text the caption continues), ``"task"`` (Florence-2 task token),
            ``"chat"`` (user message through the chat template) or ``"none"`` (no prompt).
        decoder_only: the generated sequences repeat the input ids, which are sliced off (and the
            tokenizer pads on the left so a batch's prompts end at the same column).
    """

    prompt_style: str
    decoder_only: bool


#: Family name (as reported in ``run_info()["family"]``) → how it is prompted. Every family but
#: ``chat`` is named after the ``config.model_type`` it is read from; every other model type of
#: transformers' image-text-to-text mapping is ``chat``.
FAMILIES: dict[str, CaptionFamily] = {
    "blip": CaptionFamily("prefix", True),
    "blip-2": CaptionFamily("prefix", True),  # decoder_only re-checked on the loaded LM
    "git": CaptionFamily("prefix", True),
    "vision-encoder-decoder": CaptionFamily("none", False),
    "florence2": CaptionFamily("task", False),
    "chat": CaptionFamily("chat", True),
}

#: How families are named in messages.
FAMILY_NAMES = {"blip": "BLIP", "blip-2": "BLIP-2", "git": "GIT", "florence2": "Florence-2", "chat": "chat",
                "vision-encoder-decoder": "VisionEncoderDecoder (ViT-GPT2)"}


def _image_text_to_text_classes() -> dict[str, str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return dict(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def detect_family(model_config: Any) -> str:
    """Name of the captioning family of a model, from its ``PretrainedConfig`` (no weights needed).

    ``model_type`` picks the family (a key of ``FAMILIES``; other types of transformers'
    image-text-to-text mapping are ``"chat"``). When ``config.architectures`` is set and names
    none of that mapping's classes (e.g. ``BlipForQuestionAnswering`` of a VQA checkpoint, which
    shares ``model_type="blip"`` with the captioning one), the checkpoint is refused.

    Raises:
        ModelLoadError: not an image-captioning model (the message names the supported families).
    """
    model_type = getattr(model_config, "model_type", None)
    classes = _image_text_to_text_classes()
    supported = "BLIP, BLIP-2, GIT, VisionEncoderDecoder (ViT-GPT2), Florence-2, chat models (Qwen-VL, SmolVLM...)"
    if model_type not in classes:
        raise ModelLoadError(f"model type {model_type!r} is not an image-captioning model that transformers "
                             f"can generate text with; supported: {supported}")
    architectures = list(getattr(model_config, "architectures", None) or [])
    if architectures and not set(architectures) & set(classes.values()):
        raise ModelLoadError(f"checkpoint architecture {', '.join(architectures)} (model type {model_type!r}) "
                             f"is not a captioning head; expected {classes[model_type]}")
    return model_type if model_type in FAMILIES else "chat"


def resolve_prompt(family: str, config: RunConfig) -> str | None:
    """The prompt actually used: ``config.prompt`` if given, else the family's default.

    Defaults: ``blip``, ``blip-2``, ``git``: no prefix (``None``); ``florence2``: ``"<CAPTION>"``;
    ``chat``: ``CHAT_PROMPTS[config.lang]``; ``vision-encoder-decoder``: ``None``. An empty
    ``--prompt ""`` means no prefix (prefix families) or an image-only message (chat).

    Raises:
        UsageError: ``--prompt`` given to a ``vision-encoder-decoder`` model (it takes none), or an
            empty prompt for Florence-2 (it needs a task token).
    """
    style = FAMILIES[family].prompt_style
    prompt = config.prompt
    if style == "none":
        if prompt:
            raise UsageError(f"--prompt is not supported by {family} models (they caption without a prompt)")
        return None
    if prompt is None:
        if style == "chat":
            return CHAT_PROMPTS[config.lang]
        if style == "task":
            return FLORENCE2_DEFAULT_PROMPT
        return None
    if style == "task" and not prompt.strip():
        raise UsageError("Florence-2 needs a task token as --prompt, e.g. <CAPTION> or <MORE_DETAILED_CAPTION>")
    if style == "prefix" and not prompt.strip():
        return None
    return prompt


class ImageTextProcessor:
    """Image processor + tokenizer of a checkpoint that has no processor class of its own.

    ``VisionEncoderDecoderModel`` checkpoints (e.g. ViT-GPT2) ship ``preprocessor_config.json`` and
    tokenizer files but no processor, and ``AutoProcessor`` then returns the tokenizer alone. Passed
    to ``core.models.load`` as ``processor_class``.

    Attributes:
        image_processor: the ``AutoImageProcessor`` of the checkpoint.
        tokenizer: its ``AutoTokenizer``.
    """

    def __init__(self, image_processor: Any, tokenizer: Any) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, source: str, **kwargs: Any) -> ImageTextProcessor:
        """Load both parts with the same ``from_pretrained`` arguments (``local_files_only``...)."""
        from transformers import AutoImageProcessor, AutoTokenizer

        return cls(AutoImageProcessor.from_pretrained(source, **kwargs), AutoTokenizer.from_pretrained(source, **kwargs))

    def __call__(self, images: list, return_tensors: str = "pt", **kwargs: Any) -> Any:
        """``images`` → ``{"pixel_values": (B, 3, H, W)}``."""
        return self.image_processor(images, return_tensors=return_tensors, **kwargs)


def image_only_processor_class(processor_class: type) -> type:
    """Subclass of a multimodal ``ProcessorMixin`` class that loads and runs without its video processor.

    transformers 5 instantiates every sub-processor named in a processor's ``__init__``, and video
    processors require torchvision, so ``AutoProcessor.from_pretrained`` of Qwen2-VL, Qwen2.5-VL,
    Qwen3-VL or SmolVLM raises ``ImportError`` without torchvision even for images only
    (huggingface/transformers issue #48558). The processors' own ``__call__`` only touches
    ``video_processor`` when videos are passed (``hasattr(self, "video_processor")``), so this
    subclass leaves the video attributes out of ``get_attributes`` (nothing is loaded for them) and
    passes ``None`` in their place to the parent ``__init__``. Everything else (image token
    expansion, chat template, padding) is the parent class's.
    """
    full = list(processor_class.get_attributes())
    kept = [a for a in full if "video" not in a]

    def get_attributes(cls) -> list[str]:
        return list(kept)

    def from_args_and_dict(cls, args, processor_dict, **kwargs):
        loaded = iter(args)
        args = [next(loaded) if a in kept else None for a in full]
        return super(subclass, cls).from_args_and_dict(args, processor_dict, **kwargs)

    subclass = type(processor_class.__name__, (processor_class,), {
        "__doc__": f"{processor_class.__name__} without its video processor (images only).",
        "__module__": __name__,
        "get_attributes": classmethod(get_attributes),
        "from_args_and_dict": classmethod(from_args_and_dict),
    })
    return subclass


def processor_class(family: str, model_config: Any) -> Any:
    """The ``processor_class`` to hand to ``models.load`` for a model of ``family`` (``None``:
    ``AutoProcessor``): ``ImageTextProcessor`` for vision-encoder-decoder checkpoints, an
    image-only subclass (``image_only_processor_class``) for chat models when torchvision is missing."""
    if family == "vision-encoder-decoder":
        return ImageTextProcessor
    if family == "chat":
        from transformers.utils import is_torchvision_available

        if not is_torchvision_available():
            from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

            try:
                base = PROCESSOR_MAPPING[type(model_config)]
            except (KeyError, ValueError):
                return None
            if any("video" in a for a in base.get_attributes()):
                return image_only_processor_class(base)
    return None


def is_encoder_decoder(model_config: Any) -> bool:
    """True when the model (or its text model, e.g. BLIP-2 with a T5 LM) is an encoder-decoder."""
    if getattr(model_config, "is_encoder_decoder", False):
        return True
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else None
    return bool(text_config is not None and getattr(text_config, "is_encoder_decoder", False))
