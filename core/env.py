"""Process environment defaults that must be in place before torch is imported.

This module must not import torch (directly or through other wwts modules): the CLI calls
``prepare_environment()`` first, then imports torch.
"""

from __future__ import annotations

import os
import platform


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
