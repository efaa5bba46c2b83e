"""A closed-set classifier's ``pixel_values``: resize, center crop, scale to [0, 1], normalise, with
Pillow + NumPy, in one of two conventions that differ in two details.

- ``torchvision`` (ModelScope's general recognition pipeline: ``transforms.Resize(256)``,
  ``CenterCrop(224)``, ``ToTensor()``, ``Normalize(mean, std)``, torchvision 0.2x
  ``transforms/functional.py``): the short side becomes ``size`` and the long side
  ``int(size * long / short)``; Pillow ``Image.resize`` with the given filter; crop offsets
  ``int(round((side - crop) / 2))`` (Python rounding: half to even); a side shorter than the crop
  is zero-padded, ``(crop - side) // 2`` before; ``ToTensor`` is ``uint8 → float32 / 255``;
  ``Normalize`` is float32 ``(x - mean) / std``.
- ``transformers`` (a ``preprocessor_config.json`` as transformers writes it, read like
  transformers 5's Pillow backend, the recipe ``core.input.ImagePreprocessor`` reproduces): crop
  offsets ``(side - crop) // 2`` and rescale ``uint8 as float64 * factor`` cast to float32.

``core.input.ImagePreprocessor`` is the one used when it reproduces a ``preprocessor_config.json``
(CLIP-family processors); this module covers the rest (torchvision's rounding, other processors'
keys). As there, the per-value steps are tabulated (3 x 256 float32), so results are bit-equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image

__all__ = ["ClassifierTransform", "IMAGENET_MEAN", "IMAGENET_STD"]

#: ImageNet mean / std (torchvision's and ModelScope's pipeline's values).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ClassifierTransform:
    """One RGB image → ``(1, 3, S, S)`` float32 (``S`` the crop side, else the resize side).

    Attributes:
        resize: ``("shortest_edge", n)`` or ``("height_width", (h, w))``, or ``None``.
        crop: ``(h, w)`` of the center crop, or ``None``.
        mean / std: per channel, applied after scaling (``None``: no normalisation).
        resample: Pillow filter code (2 bilinear, 3 bicubic).
        convention: ``torchvision`` or ``transformers`` (see the module docstring).
        scale: the factor that takes 8-bit values to [0, 1] (``1/255``).
    """

    resize: tuple | None
    crop: tuple[int, int] | None
    mean: tuple[float, float, float] | None = IMAGENET_MEAN
    std: tuple[float, float, float] | None = IMAGENET_STD
    resample: int = Image.Resampling.BILINEAR
    convention: str = "torchvision"
    scale: float = 1 / 255

    @property
    def input_size(self) -> int:
        """Output side in pixels."""
        if self.crop:
            return int(self.crop[0])
        return int(self.resize[1] if self.resize[0] == "shortest_edge" else self.resize[1][0])

    @property
    def draft_size(self) -> int:
        """Side the decoder may reduce a photo to without changing the result much: the resize side."""
        if self.resize and self.resize[0] == "shortest_edge":
            return int(self.resize[1])
        return self.input_size

    @cached_property
    def table(self) -> np.ndarray:
        """(3, 256) float32: each 8-bit value of each channel after scaling and normalising."""
        values = np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 256))
        if self.convention == "torchvision":
            table = values.astype(np.float32) / np.float32(255)
        else:
            table = (values.astype(np.float64) * self.scale).astype(np.float32)
        if self.mean is not None:
            table = (table - np.array(self.mean, dtype=np.float32)[:, None]) / np.array(self.std, dtype=np.float32)[:, None]
        return np.ascontiguousarray(table, dtype=np.float32)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """``image`` (EXIF orientation already applied by the decoder) → ``(1, 3, S, S)`` float32."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.resize is not None:
            image = image.resize(self._resized(image.width, image.height), resample=self.resample)
        pixels = np.asarray(image).transpose(2, 0, 1)
        if self.crop is not None:
            pixels = self._center_crop(pixels)
        out = self.table[np.arange(3)[:, None, None], pixels]
        return np.ascontiguousarray(out[None], dtype=np.float32)

    def _resized(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` after the resize."""
        kind, size = self.resize
        if kind == "height_width":
            return int(size[1]), int(size[0])
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(size * long / short)
        return (size, new_long) if width <= height else (new_long, size)

    def _center_crop(self, pixels: np.ndarray) -> np.ndarray:
        """``(3, H, W)`` uint8 → ``(3, ch, cw)``, zero-padded where a side is shorter than the crop."""
        ch, cw = self.crop
        _, h, w = pixels.shape
        if h < ch or w < cw:
            if self.convention == "torchvision":
                top, left = max(ch - h, 0) // 2, max(cw - w, 0) // 2
            else:
                top, left = -(-max(ch - h, 0) // 2), -(-max(cw - w, 0) // 2)
            padded = np.zeros((3, max(h, ch), max(w, cw)), dtype=pixels.dtype)
            padded[:, top:top + h, left:left + w] = pixels
            pixels, (_, h, w) = padded, padded.shape
        if self.convention == "torchvision":
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        else:
            top, left = (h - ch) // 2, (w - cw) // 2
        return pixels[:, top:top + ch, left:left + cw]
