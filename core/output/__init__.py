"""Records and the files they are written to."""

from .records import (LabelScore, ImageRecord, ClassifyResult, CaptionResult)
from .writers import (OutputError, FORMATS, output_format, run_sidecar_path, partial_path, read_existing, ResultWriter, open_writer, drop_records, OutputLock, lock_output, pending_paths)

__all__ = ['LabelScore', 'ImageRecord', 'ClassifyResult', 'CaptionResult', 'OutputError', 'FORMATS', 'output_format', 'run_sidecar_path', 'partial_path', 'read_existing', 'ResultWriter', 'open_writer', 'drop_records', 'OutputLock', 'lock_output', 'pending_paths']
