"""Process-wide settings, in one place: environment defaults and library switches, set once per run.

The CLI calls ``prepare_environment()`` before torch is imported, then ``configure_libraries(config)``
once the run's options are checked; the engine and the tasks never change process-wide state.
This module must not import torch at module level (directly or through other wwts modules).
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import RunConfig


def mps_may_be_used() -> bool:
    """True on macOS on Apple silicon (arm64), the only place torch offers the MPS backend."""
    return platform.system() == "Darwin" and platform.machine().lower() == "arm64"


def prepare_environment() -> None:
    """Set environment defaults that torch reads when it is imported. Call before ``import torch``.

    On macOS arm64 sets ``PYTORCH_ENABLE_MPS_FALLBACK=1`` so that an operator missing on MPS runs
    on the CPU instead of raising ``NotImplementedError`` (PyTorch's MPS backend notes,
    https://pytorch.org/docs/stable/notes/mps.html). A value the user already exported is never
    overridden, and nothing is set on other systems. Idempotent.
    """
    if mps_may_be_used():
        os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")


def configure_libraries(config: RunConfig) -> None:
    """Set the libraries' process-wide switches for a run of ``config``. Idempotent.

    - transformers and huggingface_hub log errors only, and transformers draws no "Loading
      weights" bars (hub downloads keep theirs): wwts shows its own start line and progress.
    - Pillow's warnings (bad EXIF and the like) are ignored: they become per-image notes or errors.
    - With ``config.max_pixels``, Pillow's ``Image.MAX_IMAGE_PIXELS`` is set to it: Pillow refuses
      images over twice its limit before wwts' own header check would run.

    transformers is not imported here (a run on a saved OpenVINO / ONNX Runtime conversion never
    imports it): its switches are set by ``quiet_transformers``, which ``core.models`` calls when it
    loads a model. Call after ``prepare_environment()``.
    """
    global _QUIET_TRANSFORMERS
    warnings.filterwarnings("ignore", module="PIL")
    _QUIET_TRANSFORMERS = True
    if "transformers" in sys.modules:
        quiet_transformers()
    if config.max_pixels:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = config.max_pixels


#: Set by ``configure_libraries``: transformers' logging is turned down when it is imported.
_QUIET_TRANSFORMERS = False


def quiet_transformers() -> None:
    """After ``configure_libraries``: transformers and huggingface_hub log errors only, and
    transformers draws no "Loading weights" bars. Imports transformers; idempotent; does nothing
    in a process that never called ``configure_libraries`` (a library user keeps their settings)."""
    if not _QUIET_TRANSFORMERS:
        return
    import huggingface_hub
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    huggingface_hub.utils.logging.set_verbosity_error()
