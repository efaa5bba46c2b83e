"""The classify task's side of saved exports (``core.backends`` ``save_facts``): the model facts a
torch-free run needs, saved by the run that loaded the model with transformers."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from .. import models
from ..backends import save_facts
from ..errors import describe
from ..input import UnsupportedPreprocessor

log = logging.getLogger(__name__)


def bundle_facts(task: Any) -> dict[str, Any]:
    """What ``compiled.CompiledClassifyTask`` takes from a loaded ``ClassifyTask``: the weights'
    folder (the store key's), ``model_type``, ``logit_scale`` (already ``exp()``-ed), SigLIP's raw
    ``logit_bias``, the image processor's configuration, the input size, the text token limit and
    the image encoder's name in the store key (``stored.encoder_name``)."""
    bias = getattr(task.model, "logit_bias", None)
    return {"weights_folder": task.weights_folder, "model_type": task.model_type, "logit_scale": task.logit_scale,
            "logit_bias": None if bias is None else float(bias.detach().float().reshape(-1)[0]),
            "image_recipe": task.image_recipe, "input_size": task.input_size,
            "text_max_length": task.text_max_length()}


def text_beside_torch(task: Any) -> Any:
    """``task.backend`` for building the encoders: as it is, except that a text tower planned on
    OpenVINO beside torch's image tower (``backends.auto_text_backend``) stays on torch when no
    later run could start without torch anyway: ``wwts search`` / ``embed`` (always loaded with
    transformers), or an image processor / tokenizer that ``ImagePreprocessor`` /
    ``TextTokenizer`` do not reproduce (SigLIP's SentencePiece, for one). Converting the text tower
    would then cost its first run time and buy nothing."""
    backend = task.backend
    if backend is None or backend.name != "torch" or backend.text_backend == "torch":
        return backend
    why = "wwts search / embed load the model with transformers" if task.config.retrieval else None
    if why is None:
        from .compiled import numpy_inputs

        try:
            numpy_inputs(task.image_recipe, task.weights_folder or "")
        except (UnsupportedPreprocessor, models.UnsupportedTokenizer, OSError, ValueError, KeyError) as exc:
            why = describe(exc)
    if why is None:
        return backend
    log.info("label text stays on torch: %s", why)
    return replace(backend, text="")


def save_bundle(task: Any) -> None:
    """Save the bundle of ``task``'s converted towers (its backend is OpenVINO or ONNX Runtime, or
    torch with the text tower on OpenVINO) so that the next run with the same model and backend
    starts without torch (on torch: until a photo that is not in the embedding store needs the
    image tower). A failure to write it is logged at debug level: the run goes on, the next run
    loads the model with torch again."""
    folder = task.weights_folder
    on_torch = task.backend.name == "torch"  # the torch image tower beside an OpenVINO text tower
    image = None if on_torch else getattr(task.image_encoder, "manifest", None)
    text = getattr(task.text_encoder, "manifest", None)
    if not folder or not (text and text.get("fields")) or not (on_torch or (image and image.get("fields"))):
        return
    try:
        save_facts(folder, task.backend.name, bundle_facts(task))
    except Exception as exc:  # a cache folder that cannot be written must not stop the run
        log.debug("the conversion bundle was not saved: %s", describe(exc))
