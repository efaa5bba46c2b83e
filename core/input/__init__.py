"""Finding images, decoding them, and the decode pool.

Modules: ``discover`` (inputs → image paths, stable order), ``decode`` (path → RGB
``DecodedImage`` or ``ImageError``), ``pixels`` (EXIF orientation, any mode → 8-bit RGB, draft
reduce), ``pool`` (decodes in threads or isolated worker processes ahead of the model),
``preprocess`` (RGB image → the image tower's ``pixel_values`` with Pillow + NumPy, equal to
transformers' CLIP / Chinese-CLIP / SigLIP image processors).
Nothing in this package imports torch.
"""

from .decode import (
    AVIF_SUPPORTED,
    HEIF_SUPPORTED,
    MAX_ASPECT_RATIO,
    SUPPORTED_FORMATS,
    DecodedImage,
    load_image,
    read_head,
)
from .discover import IMAGE_EXTENSIONS, discover, is_hidden, is_image_name
from .pool import (DECODE_RECIPE, EXACT_DRAFT_KEEP, FAST_DRAFT_KEEP, ISOLATED_EXTENSIONS, DecodePool, Sample,
                   isolated_decode, needs_isolation)
from .preprocess import ImagePreprocessor

__all__ = [
    "IMAGE_EXTENSIONS",
    "is_image_name",
    "discover",
    "is_hidden",
    "SUPPORTED_FORMATS",
    "HEIF_SUPPORTED",
    "AVIF_SUPPORTED",
    "MAX_ASPECT_RATIO",
    "DecodedImage",
    "load_image",
    "read_head",
    "ISOLATED_EXTENSIONS",
    "DECODE_RECIPE",
    "EXACT_DRAFT_KEEP",
    "FAST_DRAFT_KEEP",
    "needs_isolation",
    "isolated_decode",
    "DecodePool",
    "Sample",
    "ImagePreprocessor",
]
