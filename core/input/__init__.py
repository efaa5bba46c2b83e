"""Finding images, decoding them, and the decode pool."""

from .discover import (IMAGE_EXTENSIONS, is_image_name, discover, is_hidden)
from .decode import (SUPPORTED_FORMATS, HEIF_SUPPORTED, AVIF_SUPPORTED, MAX_ASPECT_RATIO, DecodedImage, load_image, read_head)
from .pool import (ISOLATED_EXTENSIONS, needs_isolation, isolated_decode, DecodePool)

__all__ = ['IMAGE_EXTENSIONS', 'is_image_name', 'discover', 'is_hidden', 'SUPPORTED_FORMATS', 'HEIF_SUPPORTED', 'AVIF_SUPPORTED', 'MAX_ASPECT_RATIO', 'DecodedImage', 'load_image', 'read_head', 'ISOLATED_EXTENSIONS', 'needs_isolation', 'isolated_decode', 'DecodePool']
