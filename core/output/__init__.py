"""Records and the files they are written to: result writers (CSV / JSON / JSONL, durable per
batch, ``.json`` published atomically), reading an output back for ``--resume``, and the lock
held on an output for a whole run. A leaf package: it imports only ``..errors`` (never torch)."""

from .lock import OutputLock, lock_output
from .paths import FORMATS, output_format, partial_path, run_sidecar_path
from .records import CaptionResult, ClassifyResult, EmbeddingRecord, ImageRecord, LabelScore, SearchResult
from .results import Results, read_results, record_labels
from .resume import (RESUME_KEYS, ResumePlan, check_settings, drop_records, pending_paths,
                     plan_resume, read_existing)
from .writers import ResultWriter, open_writer

__all__ = [
    "LabelScore", "ImageRecord", "ClassifyResult", "CaptionResult",
    "FORMATS", "output_format", "run_sidecar_path", "partial_path",
    "read_existing", "ResultWriter", "open_writer", "drop_records", "OutputLock", "lock_output",
    "pending_paths", "RESUME_KEYS", "ResumePlan", "check_settings", "plan_resume",
    "Results", "read_results", "record_labels", "SearchResult", "EmbeddingRecord",
]
