"""The image tower's ``pixel_values`` with Pillow + NumPy, equal to transformers' image processors.

A classify run on OpenVINO / ONNX Runtime must not import torch or transformers (2-3 s of
start-up), yet its ``pixel_values`` must equal what ``AutoProcessor.from_pretrained(folder)``
gives. Without torchvision, transformers 5 loads the Pillow backend (``ChineseCLIPImageProcessorPil``,
``CLIPImageProcessorPil``, ``SiglipImageProcessorPil``, whatever the saved name's suffix); this
module reproduces that backend's recipe, read from transformers 5.24:

- ``image_processing_backends.py`` ``PilBackend.process_image`` / ``_preprocess``: convert to RGB
  (``image_transforms.convert_to_rgb``: alpha composited onto white), resize, center crop, rescale,
  normalize, in that order, each only when its ``do_*`` flag is set; no fused rescale+normalize.
- ``image_transforms.get_resize_output_image_size`` (``default_to_square=False``): the short side
  becomes ``shortest_edge``, the long side ``int(shortest_edge * long / short)`` (truncated).
- ``image_transforms.resize``: Pillow ``Image.resize`` on the 8-bit image (no ``reducing_gap``).
- ``image_transforms.center_crop``: offsets ``(side - crop) // 2``; a side shorter than the crop is
  zero-padded (before rescaling), the image placed at ``ceil((crop - side) / 2)``.
- ``image_transforms.rescale``: ``(uint8 as float64 * factor)`` cast to float32; ``normalize``:
  ``(x - mean) / std`` in float32.
- ``image_processing_utils.BaseImageProcessor._set_attributes`` / ``get_size_dict``: a missing or
  null setting takes the class default; an int ``size`` means ``shortest_edge`` unless
  ``default_to_square``; an int ``crop_size`` means a square.
- ``image_processing_base.ImageProcessingMixin.get_image_processor_dict``: ``processor_config.json``'s
  ``"image_processor"`` is read before ``preprocessor_config.json``.

Because the rescale + normalize of an 8-bit value depends only on (channel, value), they are
tabulated once per processor (256 values per channel) with the same float operations, so the
output is bit-equal to transformers'.

``fast=True`` (a run's default; ``--exact-pixels`` turns it off) changes two steps: the resize
makes only the pixels the center crop keeps (Pillow ``Image.resize(size, box=...)`` over the crop's
region of the source, the same sampling positions and filter width) and lets Pillow box-reduce
first where the image is over ``REDUCING_GAP`` times too big (``reducing_gap``, Pillow docs,
``Image.resize``); rescale + normalize are one float32 multiply-add per channel (within 4e-7 of
the table). With the decoder's 1x draft (``decode.load_image(draft_keep=1)``) it cuts the CPU
per photo; its distance from the exact recipe is measured in ``scripts/bench_decode.py`` and
bounded in tests/test_fast_pixels.py.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import NotReproducible

__all__ = ["ImagePreprocessor"]

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # transformers image_utils.OPENAI_CLIP_MEAN
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)  # transformers image_utils.OPENAI_CLIP_STD
_COMMON = dict(resample=3, do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
               do_convert_rgb=True, default_to_square=False)
_CLIP = dict(_COMMON, image_mean=_CLIP_MEAN, image_std=_CLIP_STD, size={"shortest_edge": 224},
             do_center_crop=True, crop_size={"height": 224, "width": 224})
#: The class defaults of each processor reproduced (the class attributes in
#: models/{chinese_clip,clip,siglip}/image_processing_pil_*.py).
_DEFAULTS = {
    "ChineseCLIPImageProcessor": _CLIP,
    "CLIPImageProcessor": _CLIP,
    "SiglipImageProcessor": dict(_COMMON, image_mean=(0.5,) * 3, image_std=(0.5,) * 3,
                                 size={"height": 224, "width": 224}, do_center_crop=False, crop_size=None),
}
#: Keys that carry no pixel recipe (names, call-time options for array inputs).
_IGNORED = {"image_processor_type", "feature_extractor_type", "processor_class", "_processor_class",
            "image_seq_length", "disable_grouping", "return_tensors", "device", "input_data_format", "pad_size"}
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
#: ``reducing_gap`` of the fast resize: Pillow box-reduces by an integer factor first while the
#: scale left stays >= this (Pillow docs, ``Image.resize``: 3.0 is "indistinguishable from fair
#: resampling in most cases").
REDUCING_GAP = 3.0


def _processor_type(config: dict) -> str:
    key = "image_processor_type" if config.get("image_processor_type") else "feature_extractor_type"
    name = str(config.get(key) or "")
    if key == "feature_extractor_type":  # legacy hub configs: "CLIPFeatureExtractor"
        name = name.replace("FeatureExtractor", "ImageProcessor")
    for suffix in ("Pil", "Fast"):  # without torchvision transformers loads the Pil backend for all three
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if name not in _DEFAULTS:
        raise NotReproducible(f"{key}={config.get(key)!r} is not reproduced "
                                      f"(supported: {', '.join(sorted(_DEFAULTS))}, +Pil/Fast)")
    return name


def _size_dict(value, name: str, default_to_square: bool) -> dict:
    """``get_size_dict``: an int, an (h, w) pair or a dict → ``{"shortest_edge"}`` or ``{"height", "width"}``."""
    if isinstance(value, bool):
        raise NotReproducible(f"{name}={value!r} is not a size")
    if isinstance(value, int):
        return {"height": value, "width": value} if default_to_square else {"shortest_edge": value}
    if isinstance(value, (list, tuple)) and len(value) == 2:
        value = {"height": value[0], "width": value[1]}
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if v is not None}
        if set(value) in ({"shortest_edge"}, {"height", "width"}) and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value.values()):
            return value
    raise NotReproducible(f"{name}={value!r} is not supported (shortest_edge, or height and width)")


def _channels(value, name: str) -> tuple[float, float, float]:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = [value] * 3
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
        raise NotReproducible(f"{name}={value!r} is not one number or three")
    return tuple(float(v) for v in value)


def _value_table(settings: dict) -> np.ndarray:
    """(3, 256) float32: what rescale then normalize make of each 8-bit value in each channel.

    The same operations as ``image_transforms.rescale`` (float64 product, cast to float32) and
    ``image_transforms.normalize`` (float32 ``(x - mean) / std``), applied to 0..255.
    """
    values = np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 256))
    table = values.astype(np.float32)
    if settings["do_rescale"]:
        table = (values.astype(np.float64) * settings["rescale_factor"]).astype(np.float32)
    if settings["do_normalize"]:
        mean = np.array(settings["image_mean"], dtype=np.float32)[:, None]
        std = np.array(settings["image_std"], dtype=np.float32)[:, None]
        if not np.all(std != 0):
            raise NotReproducible(f"image_std={settings['image_std']!r} has a zero")
        table = (table - mean) / std
    return np.ascontiguousarray(table, dtype=np.float32)


def _check_flags(config: dict, settings: dict) -> None:
    """Refuse the settings whose effect this module does not reproduce, naming them."""
    unknown = sorted(k for k in config if k not in settings and k not in _IGNORED
                     and k not in ("do_pad", "data_format"))
    if unknown:
        raise NotReproducible(f"unsupported image processor setting(s): {', '.join(unknown)}")
    if config.get("do_pad"):
        raise NotReproducible(f"do_pad={config['do_pad']!r} is not supported")
    if config.get("data_format") not in (None, "channels_first"):
        raise NotReproducible(f"data_format={config['data_format']!r} is not supported")
    resample = settings["resample"]
    if isinstance(resample, bool) or not isinstance(resample, int) or resample not in _RESAMPLE_NAMES:
        raise NotReproducible(f"resample={resample!r} is not a Pillow filter 0-5")
    if settings["do_rescale"] and (isinstance(settings["rescale_factor"], bool)
                                   or not isinstance(settings["rescale_factor"], numbers.Real)):
        raise NotReproducible(f"rescale_factor={settings['rescale_factor']!r} is not a number")


class ImagePreprocessor:
    """One image → the ``pixel_values`` of transformers' CLIP / Chinese-CLIP / SigLIP image processor.

    Built from the image processor's config dict (``processor.image_processor.to_dict()``, or what
    ``preprocessor_config.json`` / ``processor_config.json["image_processor"]`` hold); the recipe is
    transformers 5.24's ``PilBackend`` (see the module docstring for each step's source). Calling it
    gives exactly ``processor(images=[image], return_tensors="np")["pixel_values"]``.

    Attributes:
        input_size: the side of the square output in pixels (the crop size, or the resize size
            when there is no crop).
        settings: the resolved settings (config values over the class defaults).
    """

    def __init__(self, settings: dict, *, fast: bool = False):
        """Use ``from_config`` / ``from_folder``; ``settings`` is the resolved, checked dict;
        ``fast``: the fast resize (module docstring), else bit-equal to transformers."""
        self.settings = settings
        self.fast = fast
        self._resize = settings["size"] if settings["do_resize"] else None
        self._crop = settings["crop_size"] if settings["do_center_crop"] else None
        out = self._crop or (self._resize if self._resize and "height" in self._resize else None)
        if out is None:
            raise NotReproducible(
                "the output size depends on the image (no do_center_crop and no height/width resize)")
        if out["height"] != out["width"]:
            raise NotReproducible(f"non-square output {out['height']}x{out['width']} is not supported")
        self.input_size: int = out["height"]
        self._table = _value_table(settings)
        # the table is affine in the 8-bit value: value * scale + shift per channel, (3, 1, 1) each
        self._shift = self._table[:, :1, None].copy()
        self._scale = ((self._table[:, 255:, None] - self._shift) / np.float32(255)).astype(np.float32)

    @classmethod
    def from_config(cls, config: dict, *, fast: bool = False, image_size: int | None = None) -> ImagePreprocessor:
        """The preprocessor for an image processor config dict.

        ``fast``: the fast resize (module docstring). ``image_size``: another square input side in
        pixels (``--image-size``): the resize's shortest edge (or height and width) and the crop
        become ``image_size``; ``None`` keeps the config's.

        Raises:
            NotReproducible: for an ``image_processor_type`` other than (ChineseCLIP|CLIP|
                Siglip)ImageProcessor (with or without ``Pil``/``Fast``), or a setting it does not
                reproduce (``do_pad``, ``crop_pct``, an unknown key, a resample outside Pillow's 0-5,
                a size other than shortest_edge or height x width, a non-square output), naming it.
        """
        if not isinstance(config, dict):
            raise NotReproducible(f"an image processor config is a dict, not {type(config).__name__}")
        defaults = _DEFAULTS[_processor_type(config)]
        settings = {k: (config[k] if config.get(k) is not None else v) for k, v in defaults.items()}
        _check_flags(config, settings)
        if settings["do_normalize"]:
            settings["image_mean"] = _channels(settings["image_mean"], "image_mean")
            settings["image_std"] = _channels(settings["image_std"], "image_std")
        square = bool(settings["default_to_square"])
        settings["size"] = _size_dict(settings["size"], "size", square) if settings["do_resize"] else None
        if settings["do_center_crop"]:
            if settings["crop_size"] is None:
                raise NotReproducible("do_center_crop is set but crop_size is not")
            settings["crop_size"] = _size_dict(settings["crop_size"], "crop_size", True)
            if "height" not in settings["crop_size"]:
                raise NotReproducible(f"crop_size={settings['crop_size']!r} needs height and width")
        if image_size:
            _resize_to(settings, int(image_size))
        return cls(settings, fast=fast)

    @classmethod
    def from_folder(cls, folder) -> ImagePreprocessor:
        """The preprocessor of a saved model folder, read as transformers reads it.

        ``processor_config.json``'s ``"image_processor"`` (transformers 5 ``save_pretrained``)
        wins, else ``preprocessor_config.json`` (hub layout), the order of
        ``ImageProcessingMixin.get_image_processor_dict``.

        Raises:
            NotReproducible: neither file holds an image processor config, a file is not
                JSON, or ``from_config`` refuses the config.
        """
        folder = Path(folder)
        for name, key in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
            path = folder / name
            if not path.is_file():
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise NotReproducible(f"{path}: not readable JSON ({exc})") from exc
            config = data.get(key) if key and isinstance(data, dict) else data
            if config is not None:
                return cls.from_config(config)
        raise NotReproducible(
            f"{folder}: no image processor config (processor_config.json['image_processor'] "
            "or preprocessor_config.json)")

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One image → ``(1, 3, S, S)`` float32, C-contiguous, ``S = input_size``.

        Any Pillow mode is converted as transformers does when ``do_convert_rgb`` (transparency
        composited onto white); without it the image must already be RGB.

        Raises:
            ValueError: an image that is not RGB while ``do_convert_rgb`` is off.
        """
        image = self._rgb(image)
        crop = self._crop
        if self._resize is not None:
            height, width = self._resize_shape(image.height, image.width)
            box = _crop_box(image.size, (width, height), crop) if self.fast else None
            if box is not None:  # resize straight to the crop: the crop below takes all of it
                image = image.resize((crop["width"], crop["height"]), resample=self.settings["resample"],
                                     box=box, reducing_gap=REDUCING_GAP)
            else:
                image = image.resize((width, height), resample=self.settings["resample"],
                                     reducing_gap=REDUCING_GAP if self.fast else None)
        pixels = np.asarray(image)  # (H, W, 3) uint8
        if crop is not None:
            pixels = _center_crop(pixels, crop["height"], crop["width"])
        out = np.empty((1, 3) + pixels.shape[:2], dtype=np.float32)
        if self.fast:  # rescale + normalize as one float32 multiply-add: within 1e-6 of the table, 4x faster
            np.multiply(pixels.transpose(2, 0, 1), self._scale, out=out[0])
            out += self._shift
            return out
        for channel in range(3):  # the same values as table[c][pixels[c]]; np.take is faster
            np.take(self._table[channel], pixels[:, :, channel], out=out[0, channel])
        return out

    def _rgb(self, image: Image.Image) -> Image.Image:
        if not self.settings["do_convert_rgb"]:
            if image.mode != "RGB":
                raise ValueError(f"an RGB image is needed (do_convert_rgb is off), got mode {image.mode}")
            return image
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image if image.mode == "RGB" else image.convert("RGB")

    def _resize_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after resize: ``get_resize_output_image_size`` with ``default_to_square=False``."""
        if "height" in self._resize:
            return self._resize["height"], self._resize["width"]
        edge = self._resize["shortest_edge"]
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(edge * long / short)
        return (new_long, edge) if width <= height else (edge, new_long)

    def __repr__(self) -> str:
        return f"ImagePreprocessor(input_size={self.input_size}, fast={self.fast}, settings={self.settings!r})"


def _resize_to(settings: dict, side: int) -> None:
    """Make ``settings`` give ``(side, side)`` inputs: the resize's shortest edge (or height and
    width) and the crop become ``side``."""
    if settings["size"] is not None:
        settings["size"] = ({"shortest_edge": side} if "shortest_edge" in settings["size"]
                            else {"height": side, "width": side})
    if settings["crop_size"] is not None:
        settings["crop_size"] = {"height": side, "width": side}


def _crop_box(size: tuple[int, int], resized: tuple[int, int], crop: dict | None) -> tuple[float, ...] | None:
    """The region of an image of ``size`` (w, h) that the center crop keeps of it resized to
    ``resized`` (w, h), in source pixels ``(left, top, right, bottom)``; ``None`` without a crop or
    when the crop is bigger than the resized image (it pads: the exact path does that)."""
    if crop is None or resized[0] < crop["width"] or resized[1] < crop["height"]:
        return None
    left, top = (resized[0] - crop["width"]) // 2, (resized[1] - crop["height"]) // 2
    sx, sy = size[0] / resized[0], size[1] / resized[1]
    return (left * sx, top * sy, (left + crop["width"]) * sx, (top + crop["height"]) * sy)


def _center_crop(pixels: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """``image_transforms.center_crop`` on (H, W, 3): offset ``(side - crop) // 2``; a short side zero-padded."""
    height, width = pixels.shape[:2]
    if height >= crop_h and width >= crop_w:
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        return pixels[top:top + crop_h, left:left + crop_w]
    out = np.zeros((crop_h, crop_w, pixels.shape[2]), dtype=pixels.dtype)
    src, dst = [], []
    for side, crop in ((height, crop_h), (width, crop_w)):
        if side >= crop:
            start = (side - crop) // 2
            src.append(slice(start, start + crop))
            dst.append(slice(0, crop))
        else:
            start = (crop - side + 1) // 2  # ceil((crop - side) / 2)
            src.append(slice(0, side))
            dst.append(slice(start, start + side))
    out[dst[0], dst[1]] = pixels[src[0], src[1]]
    return out
