"""wwts core: discovery, decoding, device choice, models, tasks and the batching engine.

Nothing here imports typer or rich; the engine yields results and never prints or writes files.

The package itself exports its shared leaves, which import no torch: the run configuration
(``config.py``), the errors and their exit codes (``errors.py``) and the process-wide settings
(``env.py``). Each subpackage states its own public API and is imported by name
(``from wwts.core import engine``); importing ``wwts.core`` imports none of them.
"""

from importlib.metadata import PackageNotFoundError, version

from .arrays import dtype_name
from .config import BACKENDS
from .config import (DEFAULT_OTHER_LABEL, DEFAULT_PROMPT_TEMPLATE, DTYPES, LANGS, QUANTIZE, TASKS, RunConfig,
                     fill_prompt, parse_labels, read_labels_file, validate_labels, validate_prompt_template)
from .env import configure_libraries, mps_may_be_used, prepare_environment
from .errors import DeviceError, DeviceFault, ImageError, ModelLoadError, UsageError, WwtsError, describe

try:
    __version__ = version("wwts")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    # arrays.py
    "dtype_name",
    # config.py
    "BACKENDS", "DEFAULT_OTHER_LABEL", "DEFAULT_PROMPT_TEMPLATE", "DTYPES", "LANGS", "QUANTIZE", "TASKS", "RunConfig", "fill_prompt", "parse_labels",
    "read_labels_file", "validate_labels", "validate_prompt_template",
    # env.py
    "configure_libraries", "mps_may_be_used", "prepare_environment",
    # errors.py
    "DeviceError", "DeviceFault", "ImageError", "ModelLoadError", "UsageError", "WwtsError", "describe",
]
