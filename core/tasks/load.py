"""Which task adapter a run uses: ``load_task`` dispatches on ``RunConfig.task``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import RunConfig
from .base import Task

if TYPE_CHECKING:
    import torch


def load_task(config: RunConfig, device: torch.device, dtype: torch.dtype) -> Task:
    """Build the task adapter for ``config.task`` (``classify`` or ``caption``), its model loaded on
    the CPU; the caller then moves it with ``task.to(device, dtype)``. The adapters' modules (and
    torch, transformers) are imported here, when a run needs them.

    Raises:
        ModelLoadError: the model cannot be loaded or does not fit the task.
        UsageError: a setting the model does not take (e.g. ``--prompt`` for ViT-GPT2).
    """
    if config.retrieval:  # wwts search / wwts embed: a classify model with another head
        from . import retrieval

        return retrieval.load_task(config, device, dtype)
    if config.task == "classify":
        from . import classify

        return classify.load_task(config, device, dtype)
    from . import caption

    return caption.load_task(config, device, dtype)
