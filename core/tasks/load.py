"""Which task a run uses, with its model loaded: the one place that turns ``--model`` into a model
value and a head over it.

- a contrastive dual encoder (Chinese-CLIP, CLIP, SigLIP) becomes a ``DualEncoder``: from the saved
  export of an earlier run (``load_task_from_export``: no torch, no transformers), else loaded with
  transformers (``load_task``, converted for OpenVINO / ONNX Runtime on first use), under the
  zero-shot (``ZeroShotTask``), search (``SearchTask``) or embed (``EmbedTask``) head;
- a closed-set classifier (``AutoModelForImageClassification``, ModelScope's general recognition
  model, an ONNX / TorchScript folder): ``ImageClassificationTask``;
- a caption model: ``CaptionTask``.

torch and transformers are imported by the functions that load with them, never at import time.
"""

from __future__ import annotations

from typing import Any

from .. import models
from ..config import RunConfig
from ..errors import ModelLoadError, UsageError
from ..hardware import HOST_CPU
from .task import Task
from .dual_encoder import from_model
from .embed import EmbedTask
from .exports import from_export
from .label_setup import check_text_hygiene
from .search import SearchTask
from .zero_shot import ZeroShotTask

#: What a dual-encoder head needs from a model: both towers and the learned temperature.
_DUAL_ENCODER_NEEDS = ("get_image_features", "get_text_features", "logit_scale")
_DUAL_ENCODER_HELP = ("zero-shot classification needs a contrastive dual encoder such as Chinese-CLIP, CLIP "
                      "or SigLIP (image and text towers with a learned logit_scale)")


def _head(config: RunConfig) -> type[EmbedTask]:
    """The dual-encoder head of ``config``: search, embed or zero-shot classify."""
    return {"search": SearchTask, "embed": EmbedTask}.get(config.head or "", ZeroShotTask)


def load_task(config: RunConfig, device: Any, dtype: Any) -> Task:
    """The task of ``config`` with its model loaded with transformers on the CPU (float32 weights;
    a chat caption model in half precision); the caller then moves it with ``task.to(device,
    dtype)``, which builds a dual encoder's towers on the run's backend.

    Raises:
        ModelLoadError: the model cannot be loaded, or does not fit the task: for classify, search
            and embed its config names another architecture than a dual encoder
            (``check_architecture``, before the weights are read) or the loaded model lacks
            ``get_image_features`` / ``get_text_features`` / ``logit_scale``.
        UsageError: an unknown ``--vocab``; with ``--strict-labels``, duplicate or contained labels
            (before the weights load) or nearly identical label features (after); a setting the
            model does not take (e.g. ``--prompt`` for ViT-GPT2).
    """
    if config.task == "caption" and not config.head:
        from . import caption

        return caption.load_task(config, device, dtype)
    name = models.model_for("classify", config.lang, config.model)
    if not config.head:
        folder = models.resolve(name)
        if models.folder_kind(folder):  # ModelScope's general recognition, an ONNX / TorchScript folder
            from .image_classification import load_image_classifier

            return load_image_classifier(config, name, device, dtype, folder)
    model_config = models.load_config(name, trust_remote_code=config.trust_remote_code)
    if not config.head:
        from .image_classification import is_image_classifier, load_image_classifier

        if is_image_classifier(model_config):
            if config.image_size:
                raise UsageError(f"--image-size: {name!r} is a closed-set image classifier; --image-size "
                                 "is for dual encoders (CLIP, Chinese-CLIP, SigLIP)")
            return load_image_classifier(config, name, device, dtype)
    check_architecture(name, model_config)
    if not config.head:
        check_text_hygiene(config)  # before the weights load: --strict-labels stops here
    encoder = from_model(*load_dual_encoder(config, name), fast=not config.exact_pixels, image_size=config.image_size)
    return _head(config)(config, encoder, device, dtype)


def load_task_from_export(config: RunConfig, backend: Any, dtype: str | None = None) -> ZeroShotTask | None:
    """The torch-free zero-shot task of this run, or ``None`` when the run must load the model with
    transformers: not a plain classify run (search, embed), ``--image-size``, the backend is torch with its text tower
    on torch (or ``dtype``, the torch image tower's, is unknown, or the run has no store), or no
    usable export (``exports.from_export``).

    A ``torch`` export's run starts without torch; its image tower loads with the model when a
    photo is not in the embedding store.

    Raises:
        ModelLoadError: the model is not cached and cannot be downloaded (``models.resolve``).
        UsageError: an unknown ``--vocab``; with ``--strict-labels``, duplicate or contained labels.
    """
    if config.head or config.task != "classify" or backend is None or config.image_size:
        return None  # --image-size: the model is loaded (a saved export runs the model's own size)
    if backend.name == "torch" and (backend.text_backend != "openvino" or dtype is None or not config.store):
        return None  # without the store every photo needs torch's image tower: load the model now
    dtype = dtype if backend.name == "torch" else "float32"
    name = models.model_for("classify", config.lang, config.model)
    encoder = from_export(config, backend, dtype, lambda: load_dual_encoder(config, name)[0])
    if encoder is None:
        return None
    check_text_hygiene(config)  # before the towers load: --strict-labels stops here
    task = ZeroShotTask(config, encoder, HOST_CPU, dtype)
    task.backend = backend
    return task


def load_dual_encoder(config: RunConfig, name: str) -> tuple[Any, Any]:
    """``(model, processor)`` of the contrastive dual encoder ``name``, weights in float32 on the
    CPU whatever the checkpoint stores (transformers 5 keeps the checkpoint's dtype by default;
    bf16/fp16 come from autocast, so norms and softmax stay float32). The caller has checked the
    config's architecture (``check_architecture``).

    Raises:
        ModelLoadError: the model cannot be loaded, or it lacks ``get_image_features`` /
            ``get_text_features`` / ``logit_scale``.
    """
    import torch

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
