"""The HTML contact sheet of a results file (``wwts report``, ``--report``): thumbnails made and
cached with Pillow (``thumbs``), and one page with a label filter, a sort by score and a section
of error records (``page``). An output-level leaf: it reads records through ``core.output`` and
decodes photos through ``core.input``.
"""

from .page import ReportInfo, photo_url, render, thumbs_folder, write_report
from .thumbs import THUMB_SIZE, Thumb, make_thumb, make_thumbs, thumb_key

__all__ = ["ReportInfo", "write_report", "render", "thumbs_folder", "photo_url", "THUMB_SIZE", "Thumb",
           "make_thumb", "make_thumbs", "thumb_key"]
