"""XMP sidecars: labels as ``dc:subject`` keywords and captions as ``dc:description``, beside the
photos (never inside them), merged with what a sidecar already holds. An output-level leaf: it
reads records (``core.output``) and writes small XML files.

- ``sidecar``: ``sidecar_path``, ``write_sidecar``, ``read_sidecar``, ``xmp_bytes``.
- ``tagger``: ``SidecarTagger``, the per-batch writer behind ``--write-xmp``.
"""

from .sidecar import XMP_NAMINGS, read_sidecar, sidecar_path, write_sidecar, xmp_bytes
from .tagger import SidecarTagger

__all__ = ["XMP_NAMINGS", "sidecar_path", "write_sidecar", "read_sidecar", "xmp_bytes",
           "SidecarTagger"]
